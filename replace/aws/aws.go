// Package aws replaces nodes through their AWS Auto Scaling group: it implements
// replace.Cloud with the AWS SDK for Go v2, whose standard retryer also retries the
// Auto Scaling API's contention errors on describes (a terminate is called once).
package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/smithy-go"
	"k8s.io/apimachinery/pkg/util/wait"

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
	// Attempts bounds the calls of one describe operation (a terminate is called
	// once: Replace), through the SDK's standard
	// retryer, which retries contention errors (ResourceContention,
	// ScalingActivityInProgress) beside throttling, 5xx and broken connections.
	// Default 5.
	Attempts int
	// Backoff is the first wait before a retry; it doubles, with jitter (up to half
	// again). Default 1s.
	Backoff time.Duration
	// Logger receives retries. Default: discard.
	Logger *slog.Logger
}

// Cloud is the AWS Auto Scaling replace.Cloud.
type Cloud struct {
	api     API
	opts    Options
	retryer aws.Retryer
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
	return &Cloud{api: api, opts: opts, retryer: newRetryer(opts)}
}

// contentionCodes are the errors that mean "busy, try again" beside those the SDK
// retries anyway (throttling, 5xx, broken connections).
var contentionCodes = map[string]struct{}{"ResourceContention": {}, "ScalingActivityInProgress": {}}

// newRetryer returns the SDK's standard retryer, which also retries contention
// errors: Attempts calls at most, waiting Backoff, then twice as long each time,
// with jitter; no client-side retry quota (the calls are few).
func newRetryer(opts Options) aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = opts.Attempts
		o.Retryables = append(o.Retryables, retry.RetryableErrorCode{Codes: contentionCodes})
		o.RateLimiter = ratelimit.None
		o.Backoff = retry.BackoffDelayerFunc(func(attempt int, err error) (time.Duration, error) {
			d := wait.Jitter(opts.Backoff<<min(attempt-1, 10), 0.5)
			opts.Logger.Info("Auto Scaling API busy; retrying", "attempt", attempt, "in", d, "err", err)
			return d, nil
		})
	})
}

// withRetryer makes a call use c's retryer.
func (c *Cloud) withRetryer(o *autoscaling.Options) { o.Retryer = c.retryer }

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
	out, err := c.api.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{in.ID}}, c.withRetryer)
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

// Replace implements replace.Cloud with one TerminateInstanceInAutoScalingGroup call,
// keeping the desired capacity. It is not retried here: a retry seconds later would
// act on the caller's read of the node from before the first attempt. An error the
// retryer would retry wraps replace.ErrTryAgain.
func (c *Cloud) Replace(ctx context.Context, in replace.Instance) error {
	_, err := c.api.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId:                     aws.String(in.ID),
		ShouldDecrementDesiredCapacity: aws.Bool(false),
	}, func(o *autoscaling.Options) { o.Retryer = retry.AddWithMaxAttempts(c.retryer, 1) })
	switch {
	case err == nil:
		return nil
	case notFound(err):
		return nil // already gone: done
	case c.retryer.IsErrorRetryable(err):
		return fmt.Errorf("%w: %w", replace.ErrTryAgain, err)
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
	out, err := c.api.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{name}}, c.withRetryer)
	if err != nil {
		return nil, err
	}
	if len(out.AutoScalingGroups) == 0 {
		return nil, fmt.Errorf("no Auto Scaling group %s", name)
	}
	return &out.AutoScalingGroups[0], nil
}

// notFound reports the error TerminateInstanceInAutoScalingGroup answers for an
// instance that no group manages any more.
func notFound(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "ValidationError" && strings.Contains(ae.ErrorMessage(), "not found")
}
