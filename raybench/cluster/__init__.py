"""Clusters for scaling experiments, `python -m raybench.cluster` (__main__.py): KubeRay
manifests (kuberay.py), and an emulated multi-node Ray cluster on this machine (local.py, on
the kernel's namespaces, links and cgroups in kernel.py; a node's init in node.py)."""
