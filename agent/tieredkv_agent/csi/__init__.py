"""The agent's CSI node plugin: delivers a cache's socket directory into pods as an inline ephemeral volume.

`tieredkv-agent csi` runs it as the chart's node DaemonSet (docs/security.md): the Identity and Node services
of the CSI spec over gRPC on a Unix socket, and the kubelet's plugin registration service on a socket in the
kubelet's plugins_registry directory, so the kubelet discovers the plugin without a registrar sidecar.
"""
