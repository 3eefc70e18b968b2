// Package aws replaces nodes through their AWS Auto Scaling group: it implements
// replace.Cloud with the AWS SDK for Go v2.
package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/smithy-go"

	"github.com/reboot-manager/reboot-manager/replace"
)

// API is the part of the Auto Scaling client this package calls;
// *autoscaling.Client implements it.
type API interface {
	DescribeAutoScalingInstances(ctx context.Context, in *autoscaling.DescribeAutoScalingInstancesInput, optFns ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingInstancesOutput, error)
	DescribeAutoScalingGroups(ctx context.Context, in *autoscaling.DescribeAutoScalingGroupsInput, optFns ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingGroupsOutput, error)
	TerminateInstanceInAutoScalingGroup(ctx context.Context, in *autoscaling.TerminateInstanceInAutoScalingGroupInput, optFns ...func(*autoscaling.Options)) (*autoscaling.TerminateInstanceInAutoScalingGroupOutput, error)
}

// DefaultOptInTag is the Auto Scaling group tag that opts a group in (value "true").
const DefaultOptInTag = "reboot-manager/replace"

// Options configure a Cloud.
type Options struct {
	// OptInTag is the group tag whose value "true" opts a group in. Default
	// DefaultOptInTag.
	OptInTag string
	// AllowGroups returns the groups opted in, tagged or not; called at every
	// Preflight. Optional.
	AllowGroups func() []string
	// Attempts bounds the calls of one operation the API refuses with a contention
	// error (ResourceContention, ScalingActivityInProgress). Default 5.
	Attempts int
	// Backoff is the first wait after a contention error; it doubles, with jitter.
	// Default 1s.
	Backoff time.Duration
	// Logger receives retries. Default: discard.
	Logger *slog.Logger
}

// Cloud is the AWS Auto Scaling replace.Cloud.
type Cloud struct {
	api  API
	opts Options
}

var _ replace.Cloud = (*Cloud)(nil)

// New returns a Cloud that calls api.
func New(api API, opts Options) *Cloud {
	if opts.OptInTag == "" {
		opts.OptInTag = DefaultOptInTag
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 5
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Cloud{api: api, opts: opts}
}

// Name implements replace.Cloud.
func (c *Cloud) Name() string { return "aws" }

// providerID is the only form of spec.providerID accepted: aws:///<zone>/i-<hex>.
// Fargate (aws:///<zone>/<id>/fargate-...), hybrid nodes and other clouds do not match.
var providerID = regexp.MustCompile(`^aws:///([a-z]{2}(?:-[a-z]+)+-\d[a-z])/(i-[0-9a-f]{8}(?:[0-9a-f]{9})?)$`)

// InstanceID implements replace.Cloud: the instance ID of aws:///<zone>/i-<hex>.
func (c *Cloud) InstanceID(pid string) (string, bool) {
	m := providerID.FindStringSubmatch(pid)
	if m == nil {
		return "", false
	}
	return m[2], true
}

// Resolve implements replace.Cloud with DescribeAutoScalingInstances.
func (c *Cloud) Resolve(ctx context.Context, pid string) (replace.Instance, error) {
	m := providerID.FindStringSubmatch(pid)
	if m == nil {
		return replace.Instance{}, fmt.Errorf("provider ID %q is not aws:///<zone>/i-<hex>: %w", pid, replace.ErrNotManaged)
	}
	in := replace.Instance{ID: m[2], Zone: m[1]}
	var out *autoscaling.DescribeAutoScalingInstancesOutput
	err := c.retry(ctx, "DescribeAutoScalingInstances", func() (err error) {
		out, err = c.api.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{in.ID}})
		return err
	})
	if err != nil {
		return in, err
	}
	if len(out.AutoScalingInstances) == 0 {
		return in, fmt.Errorf("instance %s belongs to no Auto Scaling group: %w", in.ID, replace.ErrNotManaged)
	}
	in.Group = aws.ToString(out.AutoScalingInstances[0].AutoScalingGroupName)
	return in, nil
}

// Preflight implements replace.Cloud: the group opted in (tag or allow-list), the
// instance InService in it, and the group's Launch process not suspended.
func (c *Cloud) Preflight(ctx context.Context, in replace.Instance) error {
	g, err := c.group(ctx, in.Group)
	if err != nil {
		return err
	}
	if !c.optedIn(g) {
		return &replace.GuardError{Guard: "NotOptedIn",
			Msg: fmt.Sprintf("group %s has not opted in (tag %s=true, or the allow-list)", in.Group, c.opts.OptInTag)}
	}
	for _, p := range g.SuspendedProcesses {
		if p := aws.ToString(p.ProcessName); p == "Launch" {
			return &replace.GuardError{Guard: "LaunchSuspended",
				Msg: fmt.Sprintf("group %s has its Launch process suspended: it would not replace the instance", in.Group)}
		}
	}
	i := slices.IndexFunc(g.Instances, func(x types.Instance) bool { return aws.ToString(x.InstanceId) == in.ID })
	if i < 0 {
		return &replace.GuardError{Guard: "NotInGroup", Msg: fmt.Sprintf("instance %s is not in group %s", in.ID, in.Group)}
	}
	if st := g.Instances[i].LifecycleState; st != types.LifecycleStateInService {
		return &replace.GuardError{Guard: "NotInService", Msg: fmt.Sprintf("instance %s is %s, not InService", in.ID, st)}
	}
	return nil
}

func (c *Cloud) optedIn(g *types.AutoScalingGroup) bool {
	if c.opts.AllowGroups != nil && slices.Contains(c.opts.AllowGroups(), aws.ToString(g.AutoScalingGroupName)) {
		return true
	}
	for _, t := range g.Tags {
		if aws.ToString(t.Key) == c.opts.OptInTag {
			return strings.EqualFold(aws.ToString(t.Value), "true")
		}
	}
	return false
}

// Replace implements replace.Cloud with TerminateInstanceInAutoScalingGroup, keeping
// the desired capacity.
func (c *Cloud) Replace(ctx context.Context, in replace.Instance) error {
	err := c.retry(ctx, "TerminateInstanceInAutoScalingGroup", func() error {
		_, err := c.api.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
			InstanceId:                     aws.String(in.ID),
			ShouldDecrementDesiredCapacity: aws.Bool(false),
		})
		return err
	})
	if notFound(err) {
		return nil // already gone: done
	}
	return err
}

// InService implements replace.Cloud.
func (c *Cloud) InService(ctx context.Context, in replace.Instance) ([]string, error) {
	g, err := c.group(ctx, in.Group)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, i := range g.Instances {
		if i.LifecycleState == types.LifecycleStateInService {
			ids = append(ids, aws.ToString(i.InstanceId))
		}
	}
	return ids, nil
}

func (c *Cloud) group(ctx context.Context, name string) (*types.AutoScalingGroup, error) {
	var out *autoscaling.DescribeAutoScalingGroupsOutput
	err := c.retry(ctx, "DescribeAutoScalingGroups", func() (err error) {
		out, err = c.api.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{name}})
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(out.AutoScalingGroups) == 0 {
		return nil, fmt.Errorf("no Auto Scaling group %s", name)
	}
	return &out.AutoScalingGroups[0], nil
}

// retry calls op again after the API's contention errors, with backoff and jitter.
func (c *Cloud) retry(ctx context.Context, what string, op func() error) error {
	wait := c.opts.Backoff
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil || !contention(err) || attempt >= c.opts.Attempts {
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		}
		d := wait + rand.N(wait/2+1)
		c.opts.Logger.Info("Auto Scaling API busy; retrying", "call", what, "attempt", attempt, "in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
		wait *= 2
	}
}

// contention reports the errors that mean "busy, try again".
func contention(err error) bool {
	var rc *types.ResourceContentionFault
	var sa *types.ScalingActivityInProgressFault
	return errors.As(err, &rc) || errors.As(err, &sa)
}

// notFound reports the error TerminateInstanceInAutoScalingGroup answers for an
// instance that no group manages any more.
func notFound(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ValidationError" && strings.Contains(ae.ErrorMessage(), "not found")
}
