package aws_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reboot-manager/reboot-manager/internal/testing/fakeasg"
	"github.com/reboot-manager/reboot-manager/replace"
	rmaws "github.com/reboot-manager/reboot-manager/replace/aws"
)

// newCloud returns the real SDK client, pointed at a fake on loopback with static
// credentials (no instance metadata, no network), wrapped in a Cloud.
func newCloud(t *testing.T, opts rmaws.Options) (*rmaws.Cloud, *fakeasg.Fake) {
	t.Helper()
	fake := fakeasg.New()
	t.Cleanup(fake.Close)
	client := autoscaling.NewFromConfig(aws.Config{
		Region:           "eu-west-1",
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""),
		RetryMaxAttempts: 1, // the Cloud's own retry is under test
	}, func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(fake.URL()) })
	if opts.Backoff == 0 {
		opts.Backoff = time.Millisecond
	}
	fake.AddGroup(&fakeasg.Group{Name: "workers", Tags: map[string]string{"reboot-manager/replace": "true"}, Desired: 2})
	fake.AddInstance("workers", "i-0123456789abcdef0", "eu-west-1a")
	fake.AddInstance("workers", "i-0fedcba9876543210", "eu-west-1b")
	fake.AddGroup(&fakeasg.Group{Name: "untagged", Desired: 1})
	fake.AddInstance("untagged", "i-00000000000000001", "eu-west-1c")
	return rmaws.New(client, opts), fake
}

const pid = "aws:///eu-west-1a/i-0123456789abcdef0"

func TestInstanceID(t *testing.T) {
	c := rmaws.New(nil, rmaws.Options{})
	for in, want := range map[string]string{
		"aws:///eu-west-1a/i-0123456789abcdef0":                            "i-0123456789abcdef0",
		"aws:///us-gov-west-1b/i-0123abcd":                                 "i-0123abcd",
		"aws:///ap-southeast-2c/i-abcdef012":                               "", // 9 hex digits: neither form
		"aws:///eu-west-1a/i-0123456789ABCDEF0":                            "", // upper case
		"aws:///eu-west-1a/fargate-ip-10-0-1-2.eu-west-1.compute.internal": "",
		"aws:///eu-west-1a/i-0123456789abcdef0/extra":                      "",
		"aws://eu-west-1a/i-0123456789abcdef0":                             "",
		"aws:///i-0123456789abcdef0":                                       "",
		"eks-hybrid:///eu-west-1/my-cluster/mi-0123456789abcdef0":          "",
		"gce://project/europe-west1-b/node-1":                              "",
		"":                                                                 "",
	} {
		id, ok := c.InstanceID(in)
		assert.Equal(t, want, id, in)
		assert.Equal(t, want != "", ok, in)
	}
}

func TestResolve(t *testing.T) {
	ctx := t.Context()
	c, fake := newCloud(t, rmaws.Options{})
	in, err := c.Resolve(ctx, pid)
	require.NoError(t, err)
	assert.Equal(t, replace.Instance{ID: "i-0123456789abcdef0", Zone: "eu-west-1a", Group: "workers"}, in)

	_, err = c.Resolve(ctx, "aws:///eu-west-1a/i-0aaaaaaaaaaaaaaaa")
	assert.ErrorIs(t, err, replace.ErrNotManaged, "an instance in no group")
	calls := len(fake.Calls())
	_, err = c.Resolve(ctx, "gce://project/zone/node")
	assert.ErrorIs(t, err, replace.ErrNotManaged)
	assert.Len(t, fake.Calls(), calls, "another cloud's node costs no AWS call")

	fake.FailNext("DescribeAutoScalingInstances", "AccessDenied", "not allowed", http.StatusForbidden)
	_, err = c.Resolve(ctx, pid)
	require.ErrorContains(t, err, "not allowed")
	assert.NotErrorIs(t, err, replace.ErrNotManaged, "an API failure is not 'never touch'")

	calls = fake.Count("DescribeAutoScalingInstances")
	fake.FailNext("DescribeAutoScalingInstances", "InternalFailure", "boom", http.StatusInternalServerError)
	_, err = c.Resolve(ctx, pid)
	require.NoError(t, err, "the SDK's retryer retries a 5xx")
	assert.Equal(t, calls+2, fake.Count("DescribeAutoScalingInstances"))
}

func TestPreflight(t *testing.T) {
	ctx := t.Context()
	c, fake := newCloud(t, rmaws.Options{})
	workers := replace.Instance{ID: "i-0123456789abcdef0", Group: "workers"}
	require.NoError(t, c.Preflight(ctx, workers))

	err := c.Preflight(ctx, replace.Instance{ID: "i-00000000000000001", Group: "untagged"})
	assert.ErrorContains(t, err, "has not opted in (tag reboot-manager/replace=true")
	fake.Suspend("workers", "Launch", false)
	assert.ErrorContains(t, c.Preflight(ctx, workers), "Launch process suspended")
	fake.Suspend("workers", "Launch", true)
	fake.Suspend("workers", "AZRebalance", false)
	require.NoError(t, c.Preflight(ctx, workers), "other suspended processes do not matter")

	require.NoError(t, c.Replace(ctx, workers))
	assert.ErrorContains(t, c.Preflight(ctx, workers), "is Terminating, not InService")
}

func TestPreflightAllowList(t *testing.T) {
	c, _ := newCloud(t, rmaws.Options{AllowGroups: func() []string { return []string{"untagged"} }})
	require.NoError(t, c.Preflight(t.Context(), replace.Instance{ID: "i-00000000000000001", Group: "untagged"}))
}

func TestReplace(t *testing.T) {
	ctx := t.Context()
	c, fake := newCloud(t, rmaws.Options{Attempts: 3})
	workers := replace.Instance{ID: "i-0123456789abcdef0", Group: "workers"}

	// One call, never retried here: the caller reads the node again before a retry.
	fake.FailNext("TerminateInstanceInAutoScalingGroup", "ResourceContention", "busy", http.StatusInternalServerError)
	err := c.Replace(ctx, workers)
	require.ErrorIs(t, err, replace.ErrTryAgain, "contention: ask again later")
	assert.ErrorContains(t, err, "ResourceContention")
	fake.FailNext("TerminateInstanceInAutoScalingGroup", "Throttling", "Rate exceeded", http.StatusBadRequest)
	require.ErrorIs(t, c.Replace(ctx, workers), replace.ErrTryAgain, "throttling: ask again later")
	assert.Equal(t, 2, fake.Count("TerminateInstanceInAutoScalingGroup"))
	assert.Equal(t, "InService", fake.InstanceState(workers.ID))

	require.NoError(t, c.Replace(ctx, workers))
	assert.Equal(t, 3, fake.Count("TerminateInstanceInAutoScalingGroup"))
	assert.Equal(t, "Terminating", fake.InstanceState(workers.ID))

	ids, err := c.InService(ctx, workers)
	require.NoError(t, err)
	assert.Equal(t, []string{"i-0fedcba9876543210"}, ids)

	other := replace.Instance{ID: "i-0fedcba9876543210", Group: "workers"}
	fake.FailNext("TerminateInstanceInAutoScalingGroup", "ValidationError", "instance is protected", http.StatusBadRequest)
	err = c.Replace(ctx, other)
	assert.ErrorContains(t, err, "instance is protected")
	assert.NotErrorIs(t, err, replace.ErrTryAgain, "a refusal is final")
	assert.Equal(t, "InService", fake.InstanceState(other.ID))

	require.NoError(t, c.Replace(ctx, replace.Instance{ID: "i-0aaaaaaaaaaaaaaaa", Group: "workers"}), "an instance no group manages is done")
}
