"""A real, local Kubernetes control plane for tieredkv's tests and demo.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (v1.20.2, built from Debian's source
package) on 127.0.0.1 with generated PKI, plus a node simulator and a volume provisioner. See
docs/dev-cluster.md for what is emulated and what is not.
"""
