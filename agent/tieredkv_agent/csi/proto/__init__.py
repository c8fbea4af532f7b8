"""protoc's output for the CSI spec's csi.proto and the kubelet's plugin registration API (`make protos`).

csi.proto is the Container Storage Interface specification's own file, vendored unchanged from the spec's
repository (container-storage-interface/spec, commit e981e2a, VERSION 1.13.0; LICENSE.csi-spec: Apache-2.0);
pluginregistration.proto is documented in its header. Do not edit the *_pb2* modules.
"""
