{{/* Names and labels. */}}
{{- define "trustd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trustd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "trustd.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "trustd.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trustd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "trustd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "trustd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trustd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trustd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Fixed paths inside the containers; the config files point at them. */}}
{{- define "trustd.serverDataDir" -}}/var/lib/trustd/server{{- end -}}
{{- define "trustd.adminSocket" -}}/var/lib/trustd/server/admin.sock{{- end -}}
{{- define "trustd.agentSocket" -}}/run/trustd/agent.sock{{- end -}}
{{- define "trustd.agentDataDir" -}}/var/lib/trustd-agent/data{{- end -}}
{{- define "trustd.joinTokenFile" -}}/var/run/secrets/trustd/join/token{{- end -}}
{{- define "trustd.bundleFile" -}}/etc/trustd/bundle/bundle.pem{{- end -}}

{{/*
The connection to OpenBao/Vault, as trustd's config reads it (VaultTransitConfig and
VaultPkiConfig share these keys). Secrets are files mounted from Kubernetes Secrets:
tokenFile, appRole.secretIdFile. Called with (dict "v" <values> "dir" <mount dir>).
*/}}
{{- define "trustd.vaultAccess" -}}
{{- $v := .v -}}
{{- $out := dict "address" $v.address "mount" $v.mount "timeout" $v.timeout -}}
{{- if $v.namespace }}{{ $_ := set $out "namespace" $v.namespace }}{{ end -}}
{{- if $v.caCert.configMap }}{{ $_ := set $out "caCert" (printf "%s/ca/%s" .dir $v.caCert.key) }}{{ end -}}
{{- if $v.auth.appRole.roleId -}}
{{- $_ := set $out "appRole" (dict "roleId" $v.auth.appRole.roleId "mount" $v.auth.appRole.mount "secretIdFile" (printf "%s/approle/%s" .dir $v.auth.appRole.secretIdSecret.key)) -}}
{{- else -}}
{{- $_ := set $out "tokenFile" (printf "%s/token/%s" .dir $v.auth.tokenSecret.key) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Volumes for one vault connection: (dict "v" <values> "prefix" <volume name prefix>). */}}
{{- define "trustd.vaultVolumes" -}}
{{- $v := .v -}}
{{- if $v.auth.appRole.roleId }}
- name: {{ .prefix }}-approle
  secret:
    secretName: {{ $v.auth.appRole.secretIdSecret.name }}
    defaultMode: 0400
    items:
    - {key: {{ $v.auth.appRole.secretIdSecret.key }}, path: {{ $v.auth.appRole.secretIdSecret.key }}}
{{- else }}
- name: {{ .prefix }}-token
  secret:
    secretName: {{ $v.auth.tokenSecret.name }}
    defaultMode: 0400
    items:
    - {key: {{ $v.auth.tokenSecret.key }}, path: {{ $v.auth.tokenSecret.key }}}
{{- end }}
{{- if $v.caCert.configMap }}
- name: {{ .prefix }}-ca
  configMap:
    name: {{ $v.caCert.configMap }}
    items:
    - {key: {{ $v.caCert.key }}, path: {{ $v.caCert.key }}}
{{- end }}
{{- end -}}

{{- define "trustd.vaultMounts" -}}
{{- $v := .v -}}
{{- if $v.auth.appRole.roleId }}
- {name: {{ .prefix }}-approle, mountPath: {{ .dir }}/approle, readOnly: true}
{{- else }}
- {name: {{ .prefix }}-token, mountPath: {{ .dir }}/token, readOnly: true}
{{- end }}
{{- if $v.caCert.configMap }}
- {name: {{ .prefix }}-ca, mountPath: {{ .dir }}/ca, readOnly: true}
{{- end }}
{{- end -}}

{{/* The server's config file (trustd.config.ServerConfig; SPEC §2). */}}
{{- define "trustd.serverConfig" -}}
{{- $s := .Values.server -}}
{{- $cfg := dict "trustDomain" .Values.trustDomain "dataDir" (include "trustd.serverDataDir" .) "adminSocket" (include "trustd.adminSocket" .) "serverAddress" "0.0.0.0:8081" "metricsAddress" "0.0.0.0:9988" "logLevel" .Values.logLevel "logFormat" "json" -}}
{{- /* the DSN comes from the environment (TRUSTD_STORE_DSN, from a Secret) */ -}}
{{- $_ := set $cfg "store" (dict "kind" "postgresql") -}}
{{- $km := $s.keyManager -}}
{{- if eq $km.kind "vault-transit" -}}
{{- $vt := fromJson (include "trustd.vaultAccess" (dict "v" $km.vaultTransit "dir" "/var/run/secrets/trustd/kms")) -}}
{{- $_ := set $vt "kind" "vault-transit" -}}
{{- $_ := set $vt "keyPrefix" $km.vaultTransit.keyPrefix -}}
{{- $_ := set $cfg "keyManager" $vt -}}
{{- else if eq $km.kind "pkcs11" -}}
{{- $p := dict "kind" "pkcs11" "module" $km.pkcs11.module "tokenLabel" $km.pkcs11.tokenLabel "pinFile" (printf "/var/run/secrets/trustd/pkcs11/%s" $km.pkcs11.pinSecret.key) -}}
{{- if not (kindIs "invalid" $km.pkcs11.slot) }}{{ $_ := set $p "slot" (int $km.pkcs11.slot) }}{{ end -}}
{{- $_ := set $cfg "keyManager" $p -}}
{{- end -}}
{{- if $s.upstreamAuthority.enabled -}}
{{- $up := fromJson (include "trustd.vaultAccess" (dict "v" $s.upstreamAuthority.vaultPki "dir" "/var/run/secrets/trustd/upstream")) -}}
{{- $_ := set $up "kind" "vault-pki" -}}
{{- if $s.upstreamAuthority.vaultPki.issuer }}{{ $_ := set $up "issuer" $s.upstreamAuthority.vaultPki.issuer }}{{ end -}}
{{- $_ := set $cfg "upstreamAuthority" $up -}}
{{- end -}}
{{- $_ := set $cfg "ca" (dict "ttl" $s.ca.ttl "keyType" $s.ca.keyType) -}}
{{- $_ := set $cfg "svid" (dict "defaultTtl" $s.svid.defaultTtl "maxTtl" $s.svid.maxTtl) -}}
{{- $_ := set $cfg "jwt" (dict "ttl" $s.jwt.ttl "maxTtl" $s.jwt.maxTtl "keyTtl" $s.jwt.keyTtl "keyType" $s.jwt.keyType) -}}
{{- $a := $s.audit -}}
{{- $audit := dict "segmentMaxBytes" (int64 $a.segmentMaxBytes) "rotateDaily" $a.rotateDaily "checkpointInterval" $a.checkpointInterval -}}
{{- if $a.retention }}{{ $_ := set $audit "retention" $a.retention }}{{ end -}}
{{- if $a.syslog.enabled -}}
{{- $sl := dict "address" $a.syslog.address "tls" $a.syslog.tls "appName" $a.syslog.appName -}}
{{- if $a.syslog.caCert.configMap }}{{ $_ := set $sl "caFile" (printf "/etc/trustd/syslog-ca/%s" $a.syslog.caCert.key) }}{{ end -}}
{{- $_ := set $audit "syslog" $sl -}}
{{- end -}}
{{- $_ := set $cfg "audit" $audit -}}
{{- $_ := set $cfg "rollout" (dict "settlePeriod" $s.rollout.settlePeriod) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The agent's config file (trustd.agent.agent_config.AgentConfig). */}}
{{- define "trustd.agentConfig" -}}
{{- $cfg := dict "trustDomain" .Values.trustDomain "serverAddress" (printf "%s-server.%s.svc:%d" (include "trustd.fullname" .) .Release.Namespace (int .Values.server.service.agentApiPort)) "dataDir" (include "trustd.agentDataDir" .) "agentSocket" (include "trustd.agentSocket" .) "metricsAddress" "0.0.0.0:9989" "logLevel" .Values.logLevel "logFormat" "json" -}}
{{- if .Values.agent.insecureBootstrap -}}
{{- $_ := set $cfg "insecureBootstrap" true -}}
{{- else -}}
{{- $_ := set $cfg "trustBundlePath" (include "trustd.bundleFile" .) -}}
{{- end -}}
{{- if .Values.agent.joinToken.perNode -}}
{{- $_ := set $cfg "joinTokenFile" (include "trustd.joinTokenFile" .) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
