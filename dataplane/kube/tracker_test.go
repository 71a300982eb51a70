package kube_test

import (
	"fmt"
	"reflect"
	"sync"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcplane/svcplane/dataplane"
	"github.com/svcplane/svcplane/dataplane/kube"
)

// fired reports whether t's Changed channel holds a signal, consuming it.
func fired(t *kube.Tracker) bool {
	select {
	case <-t.Changed():
		return true
	default:
		return false
	}
}

func expectFired(t *testing.T, tr *kube.Tracker, want bool, what string) {
	t.Helper()
	if got := fired(tr); got != want {
		t.Errorf("%s: Changed fired = %v, want %v", what, got, want)
	}
}

func TestTrackerEvents(t *testing.T) {
	tr := kube.NewTracker(dataplane.Node{Name: "node-a"})
	expectFired(t, tr, true, "new Tracker")
	expectFired(t, tr, false, "second receive")
	if s := tr.State(); len(s.Ports) != 0 {
		t.Fatalf("new Tracker: State has ports %v", portNames(s))
	}

	web := svcWeb()
	tr.OnServiceAdd(web)
	expectFired(t, tr, true, "add svc-web")
	if p := mustPort(t, tr.State(), "default/svc-web:http"); len(p.Endpoints) != 0 {
		t.Errorf("endpoints before any slice: %+v", p.Endpoints)
	}

	slice := controllerSlice("svc-web", "svc-web-x8kz2", webPods)
	tr.OnEndpointSliceAdd(slice)
	expectFired(t, tr, true, "add slice")
	if p := mustPort(t, tr.State(), "default/svc-web:http"); len(p.Endpoints) != 3 {
		t.Errorf("endpoints after slice: %+v", p.Endpoints)
	}

	// A resync (same object, same resourceVersion) changes nothing.
	tr.OnServiceUpdate(web, web)
	tr.OnEndpointSliceUpdate(slice, slice)
	expectFired(t, tr, false, "resync")

	// A new resourceVersion with only metadata changes changes nothing.
	annotated := web.DeepCopy()
	annotated.ResourceVersion = "2"
	annotated.Annotations = map[string]string{"note": "x"}
	tr.OnServiceUpdate(web, annotated)
	expectFired(t, tr, false, "annotation change")

	// Content is compared, not resourceVersions: a hand-built object that
	// keeps a stale resourceVersion is still seen.
	sameRV := annotated.DeepCopy()
	sameRV.Spec.Ports[0].Port = 8001
	tr.OnServiceUpdate(annotated, sameRV)
	expectFired(t, tr, true, "change under the same resourceVersion")

	// Events that change the State fire, several collapsing into one.
	moved := annotated.DeepCopy()
	moved.ResourceVersion = "3"
	moved.Spec.Ports[0].Port = 8000
	tr.OnServiceUpdate(annotated, moved)
	notReady := slice.DeepCopy()
	notReady.ResourceVersion = "2"
	notReady.Endpoints[0].Conditions.Ready = ptr(false)
	tr.OnEndpointSliceUpdate(slice, notReady)
	expectFired(t, tr, true, "port and readiness change")
	expectFired(t, tr, false, "after collapsing")
	p := mustPort(t, tr.State(), "default/svc-web:http")
	if p.Port != 8000 || p.Endpoints[0].Ready {
		t.Errorf("State missed an update: port %d, first endpoint %+v", p.Port, p.Endpoints[0])
	}

	// Objects Translate skips do not fire.
	tr.OnServiceAdd(svcExt())
	tr.OnServiceAdd(svcHeadless())
	fqdn := controllerSlice("svc-web", "svc-web-fqdn", nil)
	fqdn.AddressType = discoveryv1.AddressTypeFQDN
	tr.OnEndpointSliceAdd(fqdn)
	tr.OnServiceDelete(svcExt())
	tr.OnEndpointSliceDelete(fqdn)
	expectFired(t, tr, false, "skipped objects")

	// Deletes fire and remove; the deleted object's content does not matter.
	tr.OnEndpointSliceDelete(slice) // the stale version
	expectFired(t, tr, true, "delete slice")
	if p := mustPort(t, tr.State(), "default/svc-web:http"); len(p.Endpoints) != 0 {
		t.Errorf("endpoints after delete: %+v", p.Endpoints)
	}
	tr.OnServiceDelete(web)
	expectFired(t, tr, true, "delete svc-web")
	if s := tr.State(); len(s.Ports) != 0 {
		t.Errorf("ports after delete: %v", portNames(s))
	}
	tr.OnServiceDelete(web)
	tr.OnEndpointSliceDelete(slice)
	tr.OnServiceDelete(nil)
	tr.OnEndpointSliceDelete(nil)
	expectFired(t, tr, false, "deleting what is gone")

	// A Service becoming relevant (ExternalName to ClusterIP) fires.
	ext := svcExt()
	tr.OnServiceAdd(ext)
	expectFired(t, tr, false, "add ExternalName")
	changedType := svcWeb()
	changedType.Name, changedType.ResourceVersion = ext.Name, "2"
	tr.OnServiceUpdate(ext, changedType)
	expectFired(t, tr, true, "ExternalName to ClusterIP")
	// A nil new object is a delete.
	tr.OnServiceUpdate(changedType, nil)
	expectFired(t, tr, true, "update to nil")
	if s := tr.State(); len(s.Ports) != 0 {
		t.Errorf("ports after update to nil: %v", portNames(s))
	}
}

func TestTrackerClassroom(t *testing.T) {
	svcs, eps := classroom()
	tr := kube.NewTracker(dataplane.Node{Name: "node-a"})
	for _, s := range svcs {
		tr.OnServiceAdd(s)
	}
	for _, s := range eps {
		tr.OnEndpointSliceAdd(s)
	}
	want := kube.Translate(svcs, eps, nil)
	got := tr.State()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("State =\n%+v\nwant Translate's\n%+v", got, want)
	}
	// The snapshot is the caller's.
	got.Ports[0].Endpoints[0].Port = 1
	got.Ports = nil
	if again := tr.State(); !reflect.DeepEqual(again, want) {
		t.Error("changing a snapshot changed the next one")
	}
}

// TestTrackerConcurrent runs event handlers and a sync loop at once; run
// it with -race.
func TestTrackerConcurrent(t *testing.T) {
	tr := kube.NewTracker(dataplane.Node{Name: "node-a"})
	const n = 50
	var wg sync.WaitGroup
	done := make(chan struct{})
	syncs := make(chan int)
	go func() { // the sync loop
		count := 0
		for {
			select {
			case <-done:
				syncs <- count
				return
			case <-tr.Changed():
				if err := tr.State().Validate(); err != nil {
					t.Errorf("snapshot does not validate: %v", err)
				}
				count++
			}
		}
	}()
	for i := range n {
		wg.Go(func() {
			svc := svcWeb()
			svc.Name = fmt.Sprintf("svc-%d", i)
			svc.Spec.ClusterIP = fmt.Sprintf("198.19.1.%d", i+1)
			svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
			slice := controllerSlice(svc.Name, svc.Name+"-1", webPods)
			tr.OnServiceAdd(svc)
			tr.OnEndpointSliceAdd(slice)
			if i%2 == 0 {
				tr.OnServiceDelete(svc)
				tr.OnEndpointSliceDelete(slice)
			}
		})
	}
	wg.Wait()
	s := tr.State()
	close(done)
	if count := <-syncs; count < 1 {
		t.Errorf("sync loop ran %d times", count)
	}
	if len(s.Ports) != n/2 {
		t.Errorf("%d ports, want %d", len(s.Ports), n/2)
	}
	for _, p := range s.Ports {
		if len(p.Endpoints) != 3 {
			t.Errorf("%v: %d endpoints, want 3", p.Name, len(p.Endpoints))
		}
	}
}
