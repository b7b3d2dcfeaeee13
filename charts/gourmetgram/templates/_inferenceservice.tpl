{{/*
The InferenceService body, for the release's own (inferenceservice.yaml) and the shadow's
(shadow.yaml, with its values swapped in): one definition of the predictor.
*/}}
{{- define "gourmetgram.inferenceService" -}}
{{- $canary := include "gourmetgram.hasCanary" . -}}
{{- if not (has .Values.predictor.scaleMetric (list "cpu" "memory" "concurrency" "rps")) }}
{{- fail (printf "predictor.scaleMetric must be cpu|memory|concurrency|rps, got %s" .Values.predictor.scaleMetric) }}
{{- end }}
{{- if not (has .Values.logger.mode (list "all" "request" "response")) }}
{{- fail (printf "logger.mode must be all|request|response, got %s" .Values.logger.mode) }}
{{- end }}
{{- if eq (int .Values.transformer.port) (int .Values.runtime.httpPort) }}
{{- fail "transformer.port and runtime.httpPort share one pod: they must differ" }}
{{- end }}
# One component, two containers (KServe's collocated transformer, kserve#1669): Triton
# (kserve-container, from the ServingRuntime) and the transformer (transformer-container,
# the pod's serving port) share each revision, so a canary revision's transformer always
# calls its own Triton on localhost.
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {{ .Values.isvcName }}
  namespace: {{ .Values.namespace }}
  labels:
    {{- include "gourmetgram.labels" . | nindent 4 }}
    app.kubernetes.io/component: inference-service
  annotations:
    serving.kserve.io/deploymentMode: {{ .Values.deploymentMode }}
    serving.kserve.io/enable-tag-routing: {{ .Values.tagRouting | toString | quote }}
    # Triton's metrics reach Prometheus through KServe's metric aggregation (qpext, the
    # queue-proxy image the install sets in Knative's config-deployment): queue-proxy serves
    # its own series plus kserve-container's (the ServingRuntime's prometheus.kserve.io/port,
    # 8002) on port aggr-metric (9088), which the PodMonitor scrapes. Knative allows one
    # declared port per pod, so 8002 itself cannot be a scrape target (kserve v0.20.0
    # pkg/webhook/admission/pod/metrics_aggregate_injector.go, qpext/README.md).
    # No prometheus.io annotations: the PodMonitor is the one scraper.
    serving.kserve.io/enable-metric-aggregation: "true"
    serving.kserve.io/enable-prometheus-scraping: "false"
spec:
  predictor:
    minReplicas: {{ .Values.predictor.minReplicas }}
    maxReplicas: {{ .Values.predictor.maxReplicas }}
    scaleMetric: {{ .Values.predictor.scaleMetric }}
    scaleTarget: {{ .Values.predictor.scaleTarget }}
    {{- if $canary }}
    canaryTrafficPercent: {{ int .Values.canary.trafficPercent }}
    {{- end }}
    serviceAccountName: {{ .Values.serviceAccountName }}
    annotations:
      gourmetgram.io/model-version: {{ .Values.model.version | quote }}
    {{- if .Values.logger.enabled }}
    logger:
      mode: {{ .Values.logger.mode }}
      url: {{ include "gourmetgram.loggerUrl" . }}
      # each event names the version its revision serves (read from the pod's annotation above)
      metadataAnnotations: [gourmetgram.io/model-version]
    {{- end }}
    {{- with .Values.predictor.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.predictor.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    model:
      modelFormat:
        name: triton
      protocolVersion: v2
      runtime: {{ .Values.runtime.name }}
      # The bundle root; Triton serves its triton/ folder (see servingruntime.yaml).
      storageUri: {{ include "gourmetgram.bundleUri" . }}
      resources:
        {{- $res := deepCopy .Values.predictor.resources }}
        {{- if gt (int .Values.predictor.gpu) 0 }}
        {{- $limits := merge (dict "nvidia.com/gpu" (int .Values.predictor.gpu)) (default (dict) $res.limits) }}
        {{- $_ := set $res "limits" $limits }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
    containers:
      - name: transformer-container
        image: {{ include "gourmetgram.image" (dict "context" $ "name" (required "transformer.image is required" .Values.transformer.image)) }}
        args:
          - --model_name
          - {{ .Values.modelName }}
          - --protocol
          - v2
          - --predictor_host
          - localhost:{{ .Values.runtime.httpPort }}
          - --http_port
          - {{ .Values.transformer.port | quote }}
          - --model_spec
          - {{ .Values.transformer.modelSpecPath }}
          # Readiness includes Triton: with this flag kserve's /v2/models/<name>/ready asks
          # the predictor's /v2/models/<name>/ready (kserve 0.20 protocol/dataplane.py
          # model_ready); inference calls skip that check.
          - --enable_predictor_health_check
          # labels of the revision's label-free accuracy estimate (a Knative revision keeps its own args)
          - --model_version
          - {{ .Values.model.version | quote }}
          - --stage
          - {{ default .Values.stage .Values.estimateStage | quote }}
          {{- range .Values.transformer.extraArgs }}
          - {{ . | quote }}
          {{- end }}
        ports:
          - containerPort: {{ .Values.transformer.port }}
            protocol: TCP
        # Knative's queue-proxy runs the serving container's probe (knative-v1.21.1
        # pkg/reconciler/revision/resources/queue.go): a revision (a canary, staging scaling
        # from zero) takes no traffic until Triton has loaded the model.
        readinessProbe:
          httpGet:
            path: /v2/models/{{ .Values.modelName }}/ready
            port: {{ .Values.transformer.port }}
        resources:
          {{- toYaml .Values.transformer.resources | nindent 10 }}
{{- end -}}
