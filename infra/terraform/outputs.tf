output "server_floating_ip" {
  description = "Public address of the k3s server node."
  value       = openstack_networking_floatingip_v2.server.address
}

output "ssh" {
  description = "Log in to the server node."
  value       = "ssh cc@${openstack_networking_floatingip_v2.server.address}"
}

output "kubeconfig_tunnel" {
  description = "Reach the Kubernetes API through SSH, then copy /etc/rancher/k3s/k3s.yaml (server: https://127.0.0.1:6443)."
  value       = "ssh -N -L 6443:127.0.0.1:6443 cc@${openstack_networking_floatingip_v2.server.address}"
}

output "node_names" {
  value = openstack_compute_instance_v2.gpu_node[*].name
}
