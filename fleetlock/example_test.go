package fleetlock_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"

	"github.com/reboot-manager/reboot-manager/fleetlock"
)

// singleLock lets one node at a time reboot.
type singleLock struct {
	mu     sync.Mutex
	holder string
}

func (s *singleLock) PreReboot(_ context.Context, p fleetlock.ClientParams) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder != "" && s.holder != p.ID {
		return fmt.Errorf("held by %s: %w", s.holder, fleetlock.ErrLockHeld)
	}
	s.holder = p.ID
	return nil
}

func (s *singleLock) SteadyState(_ context.Context, p fleetlock.ClientParams) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holder != p.ID {
		return false, nil
	}
	s.holder = ""
	return true, nil
}

func ExampleNewHandler() {
	h := fleetlock.NewHandler(&singleLock{}, fleetlock.Options{PathPrefix: "/fleetlock"})
	srv := httptest.NewServer(h) // in production: http.ListenAndServe(addr, h)
	defer srv.Close()

	// Zincati's base_url must end with a slash to keep the prefix.
	c := &fleetlock.Client{BaseURL: srv.URL + "/fleetlock/"}
	a := fleetlock.ClientParams{ID: "aaaa", Group: "default"}
	b := fleetlock.ClientParams{ID: "bbbb", Group: "default"}
	ctx := context.Background()
	for _, step := range []struct {
		name string
		call func(context.Context, fleetlock.ClientParams) (fleetlock.Response, error)
		p    fleetlock.ClientParams
	}{
		{"a pre-reboot", c.PreReboot, a},
		{"b pre-reboot", c.PreReboot, b},
		{"a steady-state", c.SteadyState, a},
		{"b pre-reboot", c.PreReboot, b},
	} {
		resp, err := step.call(ctx, step.p)
		if err != nil {
			panic(err)
		}
		fmt.Println(step.name, resp.StatusCode, resp.Reply.Kind, resp.Reply.Value)
	}
	// Output:
	// a pre-reboot 200 lock_granted reboot lock granted: reboot now
	// b pre-reboot 409 lock_held held by aaaa: reboot lock held by another node
	// a steady-state 200 lock_released reboot lock released
	// b pre-reboot 200 lock_granted reboot lock granted: reboot now
}

func ExampleClient() {
	srv := httptest.NewServer(fleetlock.NewHandler(&singleLock{}, fleetlock.Options{}))
	defer srv.Close()

	c := &fleetlock.Client{BaseURL: srv.URL}
	resp, err := c.SteadyState(context.Background(), fleetlock.ClientParams{ID: "aaaa", Group: "default"})
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.OK(), resp.StatusCode, resp.Reply.Kind)
	resp, err = c.PreReboot(context.Background(), fleetlock.ClientParams{ID: "aaaa", Group: "no_underscores"})
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.OK(), resp.StatusCode, resp.Reply.Kind, resp.Reply.Value)
	// Output:
	// true 200 lock_not_held
	// false 400 invalid_request client_params.group: must match ^[a-zA-Z0-9.-]+$
}

func ExampleZincatiID() {
	// node.status.nodeInfo.machineID, as the kubelet reports it.
	id, err := fleetlock.ZincatiID("1C09CA98-649C-4C7A-BC77-9CD04C96812E")
	if err != nil {
		panic(err)
	}
	fmt.Println(id)
	// Output: 978a225b3d7b40e9acd7ce9b62f68444
}
