"""corral.cluster: cluster state in etcd, tasks, guests' common flow, the node daemon."""
