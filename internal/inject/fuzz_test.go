package inject_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// FuzzServeHTTP: whatever an AdmissionReview body holds, the webhook
// answers (400, or a review with a verdict) and never panics.
func FuzzServeHTTP(f *testing.F) {
	f.Add(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1","kind":{"kind":"Pod","version":"v1"},"operation":"CREATE","namespace":"demo","object":{"metadata":{"generateName":"web-"},"spec":{"containers":[{"name":"app","image":"nginx"}]}}}}`)
	f.Add(`{"request":{"kind":{"kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[]}}}}`)
	f.Add(`{"request":{"kind":{"kind":"Pod"},"operation":"CREATE","object":{"metadata":{"annotations":{"meshd.io/status":"injected"}}}}}`)
	f.Add(`{"request":{"kind":{"kind":"Pod"},"operation":"CREATE","object":null}}`)
	f.Add(`{"request":{"kind":{"kind":"Secret"},"operation":"DELETE"}}`)
	f.Add(`[]`)
	inj, _, _ := newInjector(f)
	f.Fuzz(func(t *testing.T, body string) {
		rec := httptest.NewRecorder()
		inj.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/inject", strings.NewReader(body)))
		if rec.Code == http.StatusBadRequest {
			return
		}
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d", rec.Code)
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("answer is not a review with a response: %v %s", err, rec.Body.String())
		}
	})
}
