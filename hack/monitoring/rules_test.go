package monitoring

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// The PrometheusRule of kubernetes/monitoring.yaml (the chart's, rendered) parses with
// Prometheus's rule parser: valid PromQL, durations and templates; and every alert
// tells what to run.
func TestAlertingRulesParse(t *testing.T) {
	b, err := os.ReadFile("../../kubernetes/monitoring.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc struct {
			Kind string    `yaml:"kind"`
			Spec yaml.Node `yaml:"spec"`
		}
		if err := dec.Decode(&doc); err != nil {
			break
		}
		if doc.Kind != "PrometheusRule" {
			continue
		}
		found = true
		spec, err := yaml.Marshal(&doc.Spec)
		if err != nil {
			t.Fatal(err)
		}
		groups, errs := rulefmt.Parse(spec, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
		for _, err := range errs {
			t.Errorf("kubernetes/monitoring.yaml: %v", err)
		}
		if groups == nil {
			continue
		}
		var alerts []string
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				alerts = append(alerts, r.Alert)
				if !strings.Contains(r.Annotations["description"], "reboot-manager status") {
					t.Errorf("alert %s: the description does not say to run `reboot-manager status`", r.Alert)
				}
			}
		}
		if len(alerts) < 6 {
			t.Errorf("alerts %q: want the six of the chart", alerts)
		}
	}
	if !found {
		t.Fatal("kubernetes/monitoring.yaml has no PrometheusRule")
	}
}
