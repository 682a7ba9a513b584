package inject

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/bootstrap"
)

// maxReview bounds an AdmissionReview body.
const maxReview = 4 << 20

// ServeHTTP answers AdmissionReview requests (POST /inject). A request it
// cannot read gets 400; a pod it cannot inject is denied with the reason;
// it never panics on input.
func (i *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "inject: POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReview+1))
	if err != nil || len(body) > maxReview {
		http.Error(w, "inject: request body unreadable or too large", http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("inject: not an AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 8*time.Second)
	defer cancel()
	resp := i.Admit(ctx, review.Request)
	resp.UID = review.Request.UID
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// Admit decides one admission request: pods are injected (once), anything
// else is allowed untouched.
func (i *Injector) Admit(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create {
		return &admissionv1.AdmissionResponse{Allowed: true}
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(http.StatusBadRequest, "meshd: the pod could not be decoded: %v", err)
	}
	ns := pod.Namespace
	if ns == "" {
		ns = req.Namespace
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "<generated>"
	}
	if reason := skip(&pod); reason != "" {
		i.cfg.Logger.Info("inject: not injected", "pod", ns+"/"+name, "reason", reason)
		return &admissionv1.AdmissionResponse{Allowed: true}
	}
	if len(pod.Spec.Containers) == 0 {
		return deny(http.StatusBadRequest, "meshd: pod %s/%s has no containers", ns, name)
	}
	proxyID, err := i.newProxyID()
	if err != nil {
		return deny(http.StatusInternalServerError, "%v", err)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	data, cert, err := i.credentials(ctx, ns, sa, pod.Name, proxyID)
	if err != nil {
		return deny(http.StatusInternalServerError, "meshd: sidecar credentials for %s/%s: %v", ns, name, err)
	}
	if req.DryRun == nil || !*req.DryRun {
		if _, err := i.cfg.Client.CoreV1().Secrets(ns).Create(ctx, secretFor(ns, sa, pod.Name, proxyID, data), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return deny(http.StatusInternalServerError, "meshd: create the sidecar's Secret in %s: %v", ns, err)
		}
	}
	patch, err := json.Marshal(i.patch(&pod, proxyID))
	if err != nil {
		return deny(http.StatusInternalServerError, "meshd: patch: %v", err)
	}
	i.cfg.Logger.Info("inject: sidecar added", "pod", ns+"/"+name, "proxy_id", proxyID, "identity", cert.Leaf.URIs[0].String(),
		"client_cert_serial", cert.Leaf.SerialNumber.Text(16))
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt}
}

// skip says why a pod is not injected ("" to inject): already injected
// (re-admission), opted out, host networking (no own network namespace).
func skip(pod *corev1.Pod) string {
	switch {
	case pod.Annotations[AnnotationStatus] == "injected":
		return "already injected"
	case hasContainer(pod.Spec.Containers, ContainerProxy):
		return "already has a " + ContainerProxy + " container"
	case pod.Labels[LabelInject] == "false":
		return "opted out (label " + LabelInject + "=false)"
	case pod.Spec.HostNetwork:
		return "hostNetwork pods share the node's network namespace"
	}
	return ""
}

func hasContainer(cs []corev1.Container, name string) bool {
	for _, c := range cs {
		if c.Name == name {
			return true
		}
	}
	return false
}

func deny(code int32, format string, args ...any) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Message: fmt.Sprintf(format, args...)}}
}

type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// patch adds the sidecar, the init container, the credentials volume and
// the annotations, creating the arrays and maps the pod lacks.
func (i *Injector) patch(pod *corev1.Pod, proxyID string) []patchOp {
	var ops []patchOp
	appendTo := func(path string, exists bool, v any) {
		if !exists {
			ops = append(ops, patchOp{"add", path, []any{v}})
			return
		}
		ops = append(ops, patchOp{"add", path + "/-", v})
	}
	if pod.Annotations[AnnotationInterception] != "none" {
		appendTo("/spec/initContainers", len(pod.Spec.InitContainers) > 0, i.initContainer())
	}
	appendTo("/spec/containers", true, i.proxyContainer())
	appendTo("/spec/volumes", len(pod.Spec.Volumes) > 0, corev1.Volume{Name: VolumeCreds, VolumeSource: corev1.VolumeSource{
		Secret: &corev1.SecretVolumeSource{SecretName: SecretPrefix + proxyID}}})
	if pod.Annotations == nil {
		ops = append(ops, patchOp{"add", "/metadata/annotations", map[string]string{AnnotationStatus: "injected", AnnotationProxyID: proxyID}})
	} else {
		ops = append(ops, patchOp{"add", "/metadata/annotations/meshd.io~1status", "injected"},
			patchOp{"add", "/metadata/annotations/meshd.io~1proxy-id", proxyID})
	}
	return ops
}

func (i *Injector) initContainer() corev1.Container {
	root := int64(0)
	no := false
	return corev1.Container{
		Name: ContainerInit, Image: i.cfg.InitImage,
		Args: []string{"iptables", "--proxy-uid", fmt.Sprint(ProxyUID), "--exclude-inbound-ports", fmt.Sprint(ReadinessPort)},
		SecurityContext: &corev1.SecurityContext{RunAsUser: &root, RunAsNonRoot: &no, AllowPrivilegeEscalation: &no,
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}}},
		Resources: resources("10m", "16Mi", "64Mi"),
	}
}

func (i *Injector) proxyContainer() corev1.Container {
	uid := int64(ProxyUID)
	yes, no := true, false
	return corev1.Container{
		Name: ContainerProxy, Image: i.cfg.ProxyImage,
		Args: []string{"-c", i.cfg.CredsDir + "/" + bootstrap.FileBootstrap, "--service-node", "$(POD_NAME).$(POD_NAMESPACE)",
			"--concurrency", "2", "--disable-hot-restart", "--log-level", "warn"},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		},
		Ports: []corev1.ContainerPort{{Name: "mesh-ready", ContainerPort: ReadinessPort}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: bootstrap.ReadinessPath, Port: intstr.FromInt32(ReadinessPort)}}, PeriodSeconds: 2, FailureThreshold: 30},
		SecurityContext: &corev1.SecurityContext{RunAsUser: &uid, RunAsGroup: &uid, RunAsNonRoot: &yes,
			ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &no,
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
		Resources:    resources("10m", "40Mi", "256Mi"),
		VolumeMounts: []corev1.VolumeMount{{Name: VolumeCreds, MountPath: i.cfg.CredsDir, ReadOnly: true}},
	}
}

func resources(cpu, mem, memLimit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(memLimit)},
	}
}
