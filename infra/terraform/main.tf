# GPU nodes for GourmetGram serving on Chameleon: bare-metal hosts launched on a Blazar
# GPU reservation, one security group, a floating IP on the k3s server node. k3s is
# installed by cloud-init; the platform (GPU operator, Knative, KServe, Prometheus) by
# scripts/install_platform.sh once the node is up.

locals {
  name = "gourmetgram-${var.suffix}"
}

data "openstack_networking_network_v2" "shared" {
  name = var.network_name
}

resource "openstack_compute_keypair_v2" "admin" {
  name       = "${local.name}-key"
  public_key = file(pathexpand(var.ssh_public_key_path))
}

# The k3s join token: generated here, kept in the (git-ignored) state only.
resource "random_password" "k3s_token" {
  length  = 48
  special = false
}

resource "openstack_networking_secgroup_v2" "cluster" {
  name        = "${local.name}-cluster"
  description = "GourmetGram k3s GPU nodes"
}

resource "openstack_networking_secgroup_rule_v2" "ssh" {
  security_group_id = openstack_networking_secgroup_v2.cluster.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = var.admin_cidr
}

resource "openstack_networking_secgroup_rule_v2" "kube_api" {
  security_group_id = openstack_networking_secgroup_v2.cluster.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 6443
  port_range_max    = 6443
  remote_ip_prefix  = var.admin_cidr
}

# Istio ingress gateway (NodePort-free: k3s ServiceLB binds 80/443 on the node).
resource "openstack_networking_secgroup_rule_v2" "http" {
  for_each          = toset(["80", "443"])
  security_group_id = openstack_networking_secgroup_v2.cluster.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = tonumber(each.value)
  port_range_max    = tonumber(each.value)
  remote_ip_prefix  = "0.0.0.0/0"
}

# Node-to-node traffic (flannel VXLAN, kubelet, etcd) stays inside the group.
resource "openstack_networking_secgroup_rule_v2" "intra_cluster" {
  security_group_id = openstack_networking_secgroup_v2.cluster.id
  direction         = "ingress"
  ethertype         = "IPv4"
  remote_group_id   = openstack_networking_secgroup_v2.cluster.id
}

resource "openstack_networking_port_v2" "node" {
  count              = var.node_count
  name               = "${local.name}-node-${count.index}"
  network_id         = data.openstack_networking_network_v2.shared.id
  security_group_ids = [openstack_networking_secgroup_v2.cluster.id]
}

resource "openstack_compute_instance_v2" "gpu_node" {
  count       = var.node_count
  name        = "${local.name}-gpu-${count.index}"
  image_name  = var.image_name
  flavor_name = var.gpu_flavor
  key_pair    = openstack_compute_keypair_v2.admin.name

  network {
    port = openstack_networking_port_v2.node[count.index].id
  }

  # Bare metal on Chameleon only launches inside a reservation: this is the GPU lease.
  scheduler_hints {
    additional_properties = {
      reservation = var.gpu_reservation_id
    }
  }

  user_data = templatefile("${path.module}/../cloud-init/k3s-node.yaml.tftpl", {
    k3s_version = var.k3s_version
    k3s_token   = random_password.k3s_token.result
    role        = count.index == 0 ? "server" : "agent"
    server_ip   = openstack_networking_port_v2.node[0].all_fixed_ips[0]
    # firewalld trusts the other nodes (on bare metal the security group does not filter)
    node_ips                         = [for port in openstack_networking_port_v2.node : port.all_fixed_ips[0]]
    nvidia_driver_branch             = var.nvidia_driver_branch
    nvidia_container_toolkit_version = var.nvidia_container_toolkit_version
    node_prep_b64                    = filebase64("${path.module}/../cloud-init/node-prep.sh")
  })

  metadata = {
    project = "gourmetgram"
    role    = count.index == 0 ? "k3s-server" : "k3s-agent"
  }
}

resource "openstack_networking_floatingip_v2" "server" {
  pool        = var.external_network
  description = "${local.name} k3s server"
}

resource "openstack_networking_floatingip_associate_v2" "server" {
  floating_ip = openstack_networking_floatingip_v2.server.address
  port_id     = openstack_networking_port_v2.node[0].id
}
