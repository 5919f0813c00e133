{{/*
The chart name, or nameOverride.
*/}}
{{- define "ringrift-remediator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified app name: the release name and the chart name, truncated to 63 characters
(the DNS-1123 label limit). A release whose name already contains the chart name is not repeated.
*/}}
{{- define "ringrift-remediator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The chart name and version, for the helm.sh/chart label.
*/}}
{{- define "ringrift-remediator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select a component's pods. Takes (dict "root" $ "component" "receiver").
*/}}
{{- define "ringrift-remediator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ringrift-remediator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common labels of every object. Takes (dict "root" $ "component" "receiver").
*/}}
{{- define "ringrift-remediator.labels" -}}
helm.sh/chart: {{ include "ringrift-remediator.chart" .root }}
{{ include "ringrift-remediator.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ringrift-remediator
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/*
The name of the service account the remediator's pods run as.
*/}}
{{- define "ringrift-remediator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ringrift-remediator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The remediator image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "ringrift-remediator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The name of the receiver's Service (also the host Alertmanager posts to).
*/}}
{{- define "ringrift-remediator.receiverServiceName" -}}
{{- printf "%s-receiver" (include "ringrift-remediator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The in-cluster URL Alertmanager posts alerts to.
*/}}
{{- define "ringrift-remediator.webhookUrl" -}}
{{- printf "http://%s.%s.svc:%d/webhook/alertmanager" (include "ringrift-remediator.receiverServiceName" .) .Release.Namespace (int .Values.receiver.service.port) }}
{{- end }}

{{/*
The Host names the receiver answers for (REMEDIATOR_ALLOWED_HOSTS, a guard against DNS rebinding): its
Service's names from short to fully qualified, localhost, 127.0.0.1 and [::1] (kubectl port-forward),
and receiver.allowedHosts. Probes, scrapes and webhook deliveries are answered whatever the Host.
*/}}
{{- define "ringrift-remediator.allowedHosts" -}}
{{- $svc := include "ringrift-remediator.receiverServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) "localhost" "127.0.0.1" "[::1]" }}
{{- concat $names .Values.receiver.allowedHosts | uniq | join "," }}
{{- end }}

{{/*
The name of the Secret holding the application's secrets: existingSecret, or the one the chart makes.
*/}}
{{- define "ringrift-remediator.secretName" -}}
{{- default (include "ringrift-remediator.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Which keys of the application Secret exist, as a JSON list (use with fromJsonArray). With
existingSecret these are the ones listed in secrets.existingSecretKeys; otherwise the webhook and
admin tokens (generated when not given) and every other value that is set.
*/}}
{{- define "ringrift-remediator.secretKeys" -}}
{{- $keys := list }}
{{- if .Values.secrets.existingSecret }}
{{- $keys = .Values.secrets.existingSecretKeys }}
{{- else }}
{{- $keys = list "webhook-token" "admin-token" }}
{{- range $key, $field := include "ringrift-remediator.secretFields" . | fromYaml }}
{{- if and (index $.Values.secrets $field) (not (has $key $keys)) }}
{{- $keys = append $keys $key }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $keys }}
{{- end }}

{{/*
Secret key -> the secrets.* value that fills it when the chart creates the Secret.
*/}}
{{- define "ringrift-remediator.secretFields" -}}
webhook-token: webhookToken
admin-token: adminToken
read-token: readToken
redis-sentinel-password: redisSentinelPassword
coordinator-admin-key: coordinatorAdminKey
pagerduty-routing-key: pagerdutyRoutingKey
page-webhook-url: pageWebhookUrl
vast-api-key: vastApiKey
lambda-api-key: lambdaApiKey
ssh-private-key: sshPrivateKey
ssh-known-hosts: sshKnownHosts
{{- end }}

{{/*
Secret key -> the variable naming the mounted file. Only names the application reads (the
*_FILE form of a SECRET_VARS name, or a *_FILE-style variable of its own) belong here.
*/}}
{{- define "ringrift-remediator.secretFileEnv" -}}
webhook-token: REMEDIATOR_WEBHOOK_TOKEN_FILE
admin-token: REMEDIATOR_ADMIN_TOKEN_FILE
read-token: REMEDIATOR_READ_TOKEN_FILE
redis-sentinel-password: REDIS_SENTINEL_PASSWORD_FILE
coordinator-admin-key: REMEDIATOR_COORDINATOR_ADMIN_KEY_FILE
pagerduty-routing-key: REMEDIATOR_PAGERDUTY_ROUTING_KEY_FILE
page-webhook-url: REMEDIATOR_PAGE_WEBHOOK_URL_FILE
vast-api-key: REMEDIATOR_VAST_API_KEY_FILE
lambda-api-key: REMEDIATOR_LAMBDA_API_KEY_FILE
ssh-private-key: REMEDIATOR_SSH_KEY_FILE
ssh-known-hosts: REMEDIATOR_SSH_KNOWN_HOSTS
{{- end }}

{{/*
A secret value for a key of the chart's Secret: the value given, else the one already stored in
the cluster (so upgrades keep it), else a random one. Takes (dict "root" $ "key" "webhook-token"
"value" .Values.secrets.webhookToken).
*/}}
{{- define "ringrift-remediator.generatedSecret" -}}
{{- $existing := (lookup "v1" "Secret" .root.Release.Namespace (include "ringrift-remediator.secretName" .root)).data | default dict }}
{{- if .value }}
{{- .value }}
{{- else if hasKey $existing .key }}
{{- index $existing .key | b64dec }}
{{- else }}
{{- randAlphaNum 40 }}
{{- end }}
{{- end }}

{{/*
The name of the rules ConfigMap: rules.existingConfigMap, or the one the chart makes.
*/}}
{{- define "ringrift-remediator.rulesConfigMapName" -}}
{{- default (printf "%s-rules" (include "ringrift-remediator.fullname" .)) .Values.rules.existingConfigMap }}
{{- end }}

{{/*
The rules file's content when the chart makes the ConfigMap: rules.content, or the shipped
default rules (files/default-rules.yaml, a byte-identical copy of rules/default.yaml).
*/}}
{{- define "ringrift-remediator.rulesContent" -}}
{{- default (.Files.Get "files/default-rules.yaml") .Values.rules.content }}
{{- end }}

{{/*
The rules checksum that rolls the pods when the rules change. For an existing ConfigMap the chart
cannot see the content; the application reloads the file when the ConfigMap changes.
*/}}
{{- define "ringrift-remediator.rulesChecksum" -}}
{{- if .Values.rules.existingConfigMap }}
{{- printf "%s/%s" .Values.rules.existingConfigMap .Values.rules.key | sha256sum }}
{{- else }}
{{- include "ringrift-remediator.rulesContent" . | sha256sum }}
{{- end }}
{{- end }}

{{/*
Names of the bundled Redis objects.
*/}}
{{- define "ringrift-remediator.redisName" -}}
{{- printf "%s-redis" (include "ringrift-remediator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Secret holding the bundled Redis password and the URL with it: redis.auth.existingSecret, or
the one the chart makes.
*/}}
{{- define "ringrift-remediator.redisSecretName" -}}
{{- default (include "ringrift-remediator.redisName" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{/*
Whether the remediator finds an external Redis through Sentinel (redis.external.sentinel.sentinels).
*/}}
{{- define "ringrift-remediator.sentinel" -}}
{{- if and (not .Values.redis.enabled) .Values.redis.external.sentinel.sentinels }}true{{- end }}
{{- end }}

{{/*
The Redis env entries: REDIS_URL, and under Sentinel REDIS_SENTINELS and REDIS_SENTINEL_MASTER (the
sentinels' password is a file from the application Secret, REDIS_SENTINEL_PASSWORD_FILE). A URL
that carries a password comes from a Secret (secretKeyRef), never as a literal; the application has
no REDIS_URL_FILE form. Under Sentinel the URL may be left out (db 0, no password).
*/}}
{{- define "ringrift-remediator.redisUrlEnv" -}}
{{- if include "ringrift-remediator.sentinel" . }}
{{- if not .Values.redis.external.sentinel.masterName }}
{{- fail "redis.external.sentinel.sentinels is set: set redis.external.sentinel.masterName too" }}
{{- end }}
- name: REDIS_SENTINELS
  value: {{ join "," .Values.redis.external.sentinel.sentinels | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.external.sentinel.masterName | quote }}
{{- if or .Values.redis.external.existingSecret .Values.redis.external.url }}
{{ include "ringrift-remediator.redisUrlValue" . }}
{{- end }}
{{- else }}
{{ include "ringrift-remediator.redisUrlValue" . }}
{{- end }}
{{- end }}

{{/*
The REDIS_URL env entry alone (see redisUrlEnv).
*/}}
{{- define "ringrift-remediator.redisUrlValue" -}}
- name: REDIS_URL
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ringrift-remediator.redisSecretName" . }}
      key: redis-url
{{- else }}
  value: {{ printf "redis://%s.%s.svc:%d/0" (include "ringrift-remediator.redisName" .) .Release.Namespace (int .Values.redis.port) | quote }}
{{- end }}
{{- else if .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else if .Values.redis.external.url }}
  value: {{ .Values.redis.external.url | quote }}
{{- else }}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- end }}

{{/*
Non-secret settings: config.<key> -> the application variable. An empty value is not set, so the
application's default applies.
*/}}
{{- define "ringrift-remediator.configEnvNames" -}}
coordinatorUrl: REMEDIATOR_COORDINATOR_URL
coordinatorTimeout: REMEDIATOR_COORDINATOR_TIMEOUT
coordinatorLog: REMEDIATOR_COORDINATOR_LOG
sshConnectTimeout: REMEDIATOR_SSH_CONNECT_TIMEOUT
sshCommandTimeout: REMEDIATOR_SSH_COMMAND_TIMEOUT
hostSyncLog: REMEDIATOR_HOST_SYNC_LOG
agentCheckCommand: REMEDIATOR_AGENT_CHECK_COMMAND
agentRestartCommand: REMEDIATOR_AGENT_RESTART_COMMAND
agentFallbackCommand: REMEDIATOR_AGENT_FALLBACK_COMMAND
importCommand: REMEDIATOR_IMPORT_COMMAND
dryRun: REMEDIATOR_DRY_RUN
vastUrl: REMEDIATOR_VAST_URL
vastStatusUrl: REMEDIATOR_VAST_STATUS_URL
lambdaUrl: REMEDIATOR_LAMBDA_URL
lambdaStatusUrl: REMEDIATOR_LAMBDA_STATUS_URL
pagerdutyUrl: REMEDIATOR_PAGERDUTY_URL
alertmanagerUrl: REMEDIATOR_ALERTMANAGER_URL
ledgerFile: REMEDIATOR_LEDGER_FILE
maxBodyBytes: REMEDIATOR_MAX_BODY_BYTES
queue: REMEDIATOR_QUEUE
logLevel: REMEDIATOR_LOG_LEVEL
lockTtl: REMEDIATOR_LOCK_TTL
networkProbes: REMEDIATOR_NETWORK_PROBES
maxSshSessions: REMEDIATOR_MAX_SSH_SESSIONS
coordinatorCallsPerSecond: REMEDIATOR_COORDINATOR_CALLS_PER_SECOND
providerListingSeconds: REMEDIATOR_PROVIDER_LISTING_SECONDS
coordinatorListingSeconds: REMEDIATOR_COORDINATOR_LISTING_SECONDS
limitWaitSeconds: REMEDIATOR_LIMIT_WAIT_SECONDS
{{- end }}

{{/*
NetworkPolicy egress rules every remediator pod needs: DNS, Redis, the coordinator, and HTTPS
APIs (pagers, cloud providers, Alertmanager). SSH to hosts is added for the worker only.
*/}}
{{- define "ringrift-remediator.networkPolicyEgress" -}}
{{- $np := .Values.networkPolicy }}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $np.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "ringrift-remediator.selectorLabels" (dict "root" . "component" "redis") | nindent 10 }}
  ports:
    - port: {{ .Values.redis.port }}
      protocol: TCP
{{- else }}
- ports:
    - port: {{ $np.externalRedis.port }}
      protocol: TCP
    {{- if include "ringrift-remediator.sentinel" . }}
    - port: {{ $np.externalRedis.sentinelPort }}
      protocol: TCP
    {{- end }}
  {{- with $np.externalRedis.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
- ports:
    {{- range $np.coordinator.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.coordinator.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    {{- range $np.https.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.https.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The container security context every container gets (Redis and the test hook included).
*/}}
{{- define "ringrift-remediator.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
The one pod template shared by the receiver and the worker: metadata with the checksum
annotations, and a spec with the hardened container, the secrets mounted as files, the rules
ConfigMap, and the writable emptyDirs a read-only root filesystem needs. Takes
(dict "root" $ "component" "receiver" "values" .Values.receiver "args" (list "serve" ...)
"ssh" false "recovery" false "http" true).
- ssh: mount the SSH private key and known_hosts (the worker's job, not the receiver's).
- recovery: mount the recovered-data volume at REMEDIATOR_RECOVERY_DIR.
- http: expose the HTTP port and probe /healthz and /readyz.
- preStopSleep: seconds the container sleeps in a preStop hook before it is told to stop (0: none).
*/}}
{{- define "ringrift-remediator.podTemplate" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $secretKeys := include "ringrift-remediator.secretKeys" $root | fromJsonArray }}
{{- $fileEnv := include "ringrift-remediator.secretFileEnv" $root | fromYaml }}
{{- $sshKeys := list "ssh-private-key" "ssh-known-hosts" }}
{{- $mounted := list }}
{{- range $secretKeys }}
{{- if or $.ssh (not (has . $sshKeys)) }}
{{- $mounted = append $mounted . }}
{{- end }}
{{- end }}
metadata:
  labels:
    {{- include "ringrift-remediator.selectorLabels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/rules: {{ include "ringrift-remediator.rulesChecksum" $root }}
    {{- if not $root.Values.secrets.existingSecret }}
    checksum/secrets: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- end }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ringrift-remediator.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  containers:
    - name: {{ .component }}
      image: {{ include "ringrift-remediator.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      securityContext:
        {{- include "ringrift-remediator.containerSecurityContext" $root | nindent 8 }}
      env:
        {{- include "ringrift-remediator.redisUrlEnv" $root | nindent 8 }}
        - name: REMEDIATOR_RULES_FILE
          value: {{ printf "/etc/remediator/rules/%s" $root.Values.rules.key | quote }}
        - name: PROMETHEUS_MULTIPROC_DIR
          value: /run/remediator/metrics
        {{- if .recovery }}
        - name: REMEDIATOR_RECOVERY_DIR
          value: /data/recovered
        {{- end }}
        {{- if .http }}
        - name: REMEDIATOR_ALLOWED_HOSTS
          value: {{ include "ringrift-remediator.allowedHosts" $root | quote }}
        {{- end }}
        {{- range $mounted }}
        - name: {{ index $fileEnv . }}
          value: {{ printf "/etc/remediator/secrets/%s" . | quote }}
        {{- end }}
        {{- $names := include "ringrift-remediator.configEnvNames" $root | fromYaml }}
        {{- range $key, $name := $names }}
        {{- $value := index $root.Values.config $key }}
        {{- if kindIs "slice" $value }}
        {{- $value = join "," $value }}
        {{- end }}
        {{- if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) }}
        {{- $value = int64 $value }}
        {{- end }}
        {{- if not (empty $value) }}
        - name: {{ $name }}
          value: {{ $value | toString | quote }}
        {{- end }}
        {{- end }}
      {{- if .preStopSleep }}
      lifecycle:
        preStop:
          exec:
            command: ["sleep", {{ .preStopSleep | toString | quote }}]
      {{- end }}
      {{- if .http }}
      ports:
        - name: http
          containerPort: {{ $v.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $v.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml $v.readinessProbe | nindent 8 }}
      {{- end }}
      {{- with $v.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: rules
          mountPath: /etc/remediator/rules
          readOnly: true
        {{- if $mounted }}
        - name: secrets
          mountPath: /etc/remediator/secrets
          readOnly: true
        {{- end }}
        - name: tmp
          mountPath: /tmp
        - name: home
          mountPath: /home/remediator
        - name: metrics
          mountPath: /run/remediator/metrics
        {{- if .recovery }}
        - name: recovered
          mountPath: /data/recovered
        {{- end }}
  volumes:
    - name: rules
      configMap:
        name: {{ include "ringrift-remediator.rulesConfigMapName" $root }}
    {{- if $mounted }}
    - name: secrets
      secret:
        secretName: {{ include "ringrift-remediator.secretName" $root }}
        defaultMode: 0440
        items:
          {{- range $mounted }}
          - key: {{ . }}
            path: {{ . }}
          {{- end }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    - name: home
      emptyDir:
        sizeLimit: 16Mi
    - name: metrics
      emptyDir:
        medium: Memory
        sizeLimit: 64Mi
    {{- if .recovery }}
    - name: recovered
      {{- if $root.Values.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ default (printf "%s-recovered" (include "ringrift-remediator.fullname" $root)) $root.Values.persistence.existingClaim }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity | default $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
