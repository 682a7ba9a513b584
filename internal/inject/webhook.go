package inject

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/xds/translate"
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
	// A pod that arrives looking injected is not skipped: the webhook sees
	// each pod once, at creation (reinvocationPolicy Never), so such a pod
	// chose its own sidecar or proxy ID; nameClash refuses the first, the
	// patch overwrites the second.
	if reason := k8s.NotMeshable(&pod); reason != "" {
		i.cfg.Logger.Info("inject: not injected", "pod", ns+"/"+name, "reason", reason)
		return skipped(&pod, reason)
	}
	if len(pod.Spec.Containers) == 0 {
		return deny(http.StatusBadRequest, "meshd: pod %s/%s has no containers", ns, name)
	}
	if clash := nameClash(&pod); clash != "" {
		return deny(http.StatusBadRequest, "meshd: pod %s/%s cannot be injected: %s; rename it, or opt the pod out with the label %s=false", ns, name, clash, k8s.LabelInject)
	}
	if clash := portClash(&pod); clash != "" {
		return deny(http.StatusBadRequest, "meshd: pod %s/%s cannot be injected: %s; move it to another port, or opt the pod out with the label %s=false", ns, name, clash, k8s.LabelInject)
	}
	if pod.Annotations[k8s.AnnotationInterception] != "none" {
		if msg := i.podSecurity(ctx, ns); msg != "" {
			return deny(http.StatusForbidden, "meshd: pod %s/%s: %s", ns, name, msg)
		}
	}
	if _, err := exclusions(&pod); err != nil {
		return deny(http.StatusBadRequest, "meshd: pod %s/%s: %v", ns, name, err)
	}
	sa := podServiceAccount(&pod)
	var probeOps []patchOp
	var probes map[string]bootstrap.AppProbe
	if pod.Annotations[k8s.AnnotationRewriteProbes] != "false" {
		probeOps, probes = rewriteProbes(&pod)
	}
	var ops []patchOp
	if i.cfg.PodCertificateSigner != "" {
		annotations, err := i.podCertificateFiles(ns, sa, pod.Name, probes)
		if err != nil {
			return deny(http.StatusInternalServerError, "meshd: sidecar bootstrap for %s/%s: %v", ns, name, err)
		}
		annotations[k8s.AnnotationStatus] = k8s.StatusInjected
		if ops, err = i.patch(&pod, i.podCertificateVolume(), annotations, probes); err != nil {
			return deny(http.StatusInternalServerError, "meshd: sidecar for %s/%s: %v", ns, name, err)
		}
		i.cfg.Logger.Info("inject: sidecar added", "pod", ns+"/"+name, "credentials", "podCertificate volume (key made by the kubelet)",
			"signer", i.cfg.PodCertificateSigner, "probes_rewritten", len(probes))
	} else {
		proxyID, err := i.newProxyID()
		if err != nil {
			return deny(http.StatusInternalServerError, "%v", err)
		}
		if ops, err = i.secretVolume(&pod, ns, name, proxyID, probes); err != nil {
			return deny(http.StatusInternalServerError, "meshd: sidecar for %s/%s: %v", ns, name, err)
		}
	}
	patch, err := json.Marshal(append(ops, probeOps...))
	if err != nil {
		return deny(http.StatusInternalServerError, "meshd: patch: %v", err)
	}
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt}
}

// secretVolume returns the patch that mounts the proxy's credentials
// Secret and records what that Secret is made from (proxy ID, app probes).
// Admission writes nothing: the SecretWriter creates the Secret once the
// pod exists (with a name and a UID to own it).
func (i *Injector) secretVolume(pod *corev1.Pod, ns, name, proxyID string, probes map[string]bootstrap.AppProbe) ([]patchOp, error) {
	annotations := map[string]string{k8s.AnnotationStatus: k8s.StatusInjected, k8s.AnnotationProxyID: proxyID}
	// Recorded whenever there are probes or the pod came with the key: what
	// the writer reads is the injector's, never the pod creator's.
	if _, came := pod.Annotations[annotationProbes]; len(probes) > 0 || came {
		b, err := json.Marshal(probes)
		if err != nil {
			return nil, fmt.Errorf("app probes: %w", err)
		}
		annotations[annotationProbes] = string(b)
	}
	vol := corev1.Volume{Name: VolumeCreds, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: SecretPrefix + proxyID}}}
	i.cfg.Logger.Info("inject: sidecar added", "pod", ns+"/"+name, "proxy_id", proxyID, "credentials", "Secret "+vol.Secret.SecretName+" (written once the pod exists)",
		"probes_rewritten", len(probes))
	return i.patch(pod, vol, annotations, probes)
}

// skipped allows a pod that is not injected, saying why to whoever created
// it (kubectl prints admission warnings) and on the pod itself (annotation
// meshd.io/status, which also makes meshd emit a NotInjected Event); a pod
// opted out on purpose is left as it is.
func skipped(pod *corev1.Pod, reason string) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{Allowed: true}
	if pod.Labels[k8s.LabelInject] == "false" {
		return resp
	}
	resp.Warnings = []string{"meshd: no sidecar injected: " + reason}
	var op patchOp
	if pod.Annotations == nil {
		op = patchOp{"add", "/metadata/annotations", map[string]string{k8s.AnnotationStatus: k8s.StatusSkipped + ": " + reason}}
	} else {
		op = patchOp{"add", annotationPath(k8s.AnnotationStatus), k8s.StatusSkipped + ": " + reason}
	}
	if patch, err := json.Marshal([]patchOp{op}); err == nil {
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
	}
	return resp
}

// nameClash says what of the pod collides with what the injector adds or
// relies on ("" if nothing): a container or volume with an injected name
// (an invalid pod, or the pod's own container in the sidecar's place), a
// container mounting the sidecar's credentials, or one running as the
// sidecar's uid (whose traffic is not intercepted).
func nameClash(pod *corev1.Pod) string {
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == k8s.ContainerProxy || c.Name == k8s.ContainerInit {
			return fmt.Sprintf("it already has a container named %q, the name of meshd's %s", c.Name, map[string]string{k8s.ContainerProxy: "sidecar", k8s.ContainerInit: "init container"}[c.Name])
		}
		for _, m := range c.VolumeMounts {
			if m.Name == VolumeCreds {
				return fmt.Sprintf("container %q mounts %q, the sidecar's credentials", c.Name, VolumeCreds)
			}
		}
		if uid := runAsUser(pod, &c); uid != nil && *uid == ProxyUID {
			return fmt.Sprintf("container %q runs as uid %d, the sidecar's, whose traffic is not intercepted", c.Name, ProxyUID)
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == VolumeCreds {
			return fmt.Sprintf("it already has a volume named %q, the name of the sidecar's credentials volume", v.Name)
		}
	}
	return ""
}

// portClash says which container port of the pod is one the sidecar
// listens on ("" if none): the app could not bind it, or the sidecar could
// not (Envoy's admin port on 127.0.0.1, the readiness port, and with
// interception the ports the traffic is redirected to).
func portClash(pod *corev1.Pod) string {
	taken := map[int32]string{bootstrap.DefaultAdminPort: "its admin port, on 127.0.0.1", ReadinessPort: "its readiness port"}
	if pod.Annotations[k8s.AnnotationInterception] != "none" {
		taken[translate.OutboundPort] = "the port outbound traffic is redirected to"
		taken[translate.InboundPort] = "the port inbound traffic is redirected to"
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		for _, p := range c.Ports {
			if what, ok := taken[p.ContainerPort]; ok && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
				return fmt.Sprintf("container %q declares port %d, which the sidecar listens on (%s)", c.Name, p.ContainerPort, what)
			}
		}
	}
	return ""
}

// podSecurity returns why the namespace's Pod Security level would reject
// the injected init container ("" if it would not): it needs NET_ADMIN and
// NET_RAW, which the baseline and restricted levels forbid. Denying here
// says so in meshd's words.
func (i *Injector) podSecurity(ctx context.Context, ns string) string {
	n, err := i.cfg.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return "" // the apiserver's own Pod Security check still applies
	}
	level := n.Labels["pod-security.kubernetes.io/enforce"]
	if level != "baseline" && level != "restricted" {
		return ""
	}
	return fmt.Sprintf("namespace %s enforces Pod Security level %q, which forbids the NET_ADMIN and NET_RAW capabilities meshd's init container needs to set up traffic interception; "+
		"set the namespace to privileged (label pod-security.kubernetes.io/enforce=privileged), or annotate the pod %s=none (the app then talks to the sidecar's listeners itself), or opt it out with the label %s=false",
		ns, level, k8s.AnnotationInterception, k8s.LabelInject)
}

// runAsUser is the uid a container's spec sets (its own, else the pod's);
// nil when the image decides.
func runAsUser(pod *corev1.Pod, c *corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if pod.Spec.SecurityContext != nil {
		return pod.Spec.SecurityContext.RunAsUser
	}
	return nil
}

// FindProxy returns the pod's injected sidecar (a native sidecar among the
// init containers), or nil.
func FindProxy(pod *corev1.Pod) *corev1.Container {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == k8s.ContainerProxy {
				return &cs[i]
			}
		}
	}
	return nil
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

// patch adds the init container and the sidecar in front of the pod's own
// init containers (so those have the mesh too), the credentials volume and
// the annotations, creating the arrays and maps the pod lacks.
//
// The sidecar is a native sidecar (an init container with restartPolicy
// Always): the kubelet starts the app only once the proxy's startup probe
// passes, stops the proxy after the app, and a Job's pod completes when
// its app containers do.
func (i *Injector) patch(pod *corev1.Pod, creds corev1.Volume, annotations map[string]string, probes map[string]bootstrap.AppProbe) ([]patchOp, error) {
	proxy, err := i.proxyContainer(probes)
	if err != nil {
		return nil, err
	}
	var ops []patchOp
	appendTo := func(path string, exists bool, v any) {
		if !exists {
			ops = append(ops, patchOp{"add", path, []any{v}})
			return
		}
		ops = append(ops, patchOp{"add", path + "/-", v})
	}
	inits := []any{}
	if pod.Annotations[k8s.AnnotationInterception] != "none" {
		excluded, _ := exclusions(pod) // checked by Admit
		inits = append(inits, i.initContainer(excluded))
	}
	inits = append(inits, proxy)
	if len(pod.Spec.InitContainers) == 0 {
		ops = append(ops, patchOp{"add", "/spec/initContainers", inits})
	} else {
		for k := len(inits) - 1; k >= 0; k-- {
			ops = append(ops, patchOp{"add", "/spec/initContainers/0", inits[k]})
		}
	}
	appendTo("/spec/volumes", len(pod.Spec.Volumes) > 0, creds)
	if pod.Annotations == nil {
		return append(ops, patchOp{"add", "/metadata/annotations", annotations}), nil
	}
	keys := make([]string, 0, len(annotations))
	for k := range annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ops = append(ops, patchOp{"add", annotationPath(k), annotations[k]})
	}
	return ops, nil
}

// annotationPath is the JSON pointer (RFC 6901) of a pod annotation.
func annotationPath(key string) string {
	return "/metadata/annotations/" + strings.ReplaceAll(strings.ReplaceAll(key, "~", "~0"), "/", "~1")
}

// exclusions are the init container's arguments for the pod's exclude
// annotations (k8s.AnnotationExcludeInboundPorts and the others); the
// readiness port is always reached directly.
func exclusions(pod *corev1.Pod) ([]string, error) {
	a := pod.Annotations
	in, err := k8s.ParsePorts(fmt.Sprintf("%d,%s", ReadinessPort, a[k8s.AnnotationExcludeInboundPorts]))
	if err != nil {
		return nil, fmt.Errorf("annotation %s=%q: %v", k8s.AnnotationExcludeInboundPorts, a[k8s.AnnotationExcludeInboundPorts], err)
	}
	out, err := k8s.ParsePorts(a[k8s.AnnotationExcludeOutboundPorts])
	if err != nil {
		return nil, fmt.Errorf("annotation %s=%q: %v", k8s.AnnotationExcludeOutboundPorts, a[k8s.AnnotationExcludeOutboundPorts], err)
	}
	cidrs, err := k8s.ParseCIDRs(a[k8s.AnnotationExcludeOutboundCIDRs])
	if err != nil {
		return nil, fmt.Errorf("annotation %s=%q: %v", k8s.AnnotationExcludeOutboundCIDRs, a[k8s.AnnotationExcludeOutboundCIDRs], err)
	}
	args := []string{"--exclude-inbound-ports", commaList(in)}
	if len(out) > 0 {
		args = append(args, "--exclude-outbound-ports", commaList(out))
	}
	if len(cidrs) > 0 {
		args = append(args, "--exclude-outbound-cidrs", commaList(cidrs))
	}
	return args, nil
}

// commaList is "a,b,c" of the items' printed forms.
func commaList[T any](items []T) string {
	s := make([]string, len(items))
	for i, it := range items {
		s[i] = fmt.Sprint(it)
	}
	return strings.Join(s, ",")
}

func (i *Injector) initContainer(excluded []string) corev1.Container {
	root := int64(0)
	no := false
	return corev1.Container{
		Name: k8s.ContainerInit, Image: i.cfg.InitImage,
		Args: append([]string{"iptables", "--proxy-uid", fmt.Sprint(ProxyUID)}, excluded...),
		SecurityContext: &corev1.SecurityContext{RunAsUser: &root, RunAsNonRoot: &no, AllowPrivilegeEscalation: &no,
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}}},
		Resources: resources("10m", "16Mi", "64Mi"),
	}
}

// proxyContainer is the sidecar: Envoy with the bootstrap from the
// credentials volume, its node named from the downward API, and the
// clusters of the app's probes on its command line (they need the pod's
// address, which the kubelet fills in).
func (i *Injector) proxyContainer(probes map[string]bootstrap.AppProbe) (corev1.Container, error) {
	uid := int64(ProxyUID)
	yes, no := true, false
	always := corev1.ContainerRestartPolicyAlways
	ready := func(period, failures int32) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: bootstrap.ReadinessPath, Port: intstr.FromInt32(ReadinessPort)}}, PeriodSeconds: period, FailureThreshold: failures}
	}
	probeArgs, err := bootstrap.ProbeArgs(probes)
	if err != nil {
		return corev1.Container{}, err
	}
	env := []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	}
	if len(probeArgs) > 0 {
		env = append(env, corev1.EnvVar{Name: bootstrap.PodIPEnv, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}})
	}
	args := append([]string{"-c", i.cfg.CredsDir + "/" + bootstrap.FileBootstrap, "--service-node", "$(POD_NAME).$(POD_NAMESPACE)"},
		bootstrap.EnvoyFlags(2)...)
	return corev1.Container{
		Name: k8s.ContainerProxy, Image: i.cfg.ProxyImage,
		RestartPolicy: &always,
		Args:          append(args, probeArgs...),
		Env:           env,
		Ports:         []corev1.ContainerPort{{Name: "mesh-ready", ContainerPort: ReadinessPort}},
		// The app starts once the proxy has its configuration and
		// certificates (up to 10 minutes, e.g. while meshd restarts).
		StartupProbe:   ready(1, 600),
		ReadinessProbe: ready(2, 3),
		// The kubelet stops the sidecar after the app. Its endpoint is
		// already gone from the other sidecars' view by then; the pause lets
		// requests they had under way finish before Envoy exits.
		Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 5}}},
		SecurityContext: &corev1.SecurityContext{RunAsUser: &uid, RunAsGroup: &uid, RunAsNonRoot: &yes,
			ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &no,
			Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
		Resources:    resources("10m", "40Mi", "256Mi"),
		VolumeMounts: []corev1.VolumeMount{{Name: VolumeCreds, MountPath: i.cfg.CredsDir, ReadOnly: true}},
	}, nil
}

func resources(cpu, mem, memLimit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(memLimit)},
	}
}
