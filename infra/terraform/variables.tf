variable "suffix" {
  description = "Appended to every resource name (your project or initials) so leases and nodes are attributable."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9-]{1,20}$", var.suffix))
    error_message = "suffix: 1-20 lowercase letters, digits or dashes."
  }
}

variable "gpu_reservation_id" {
  description = "Blazar reservation id of the GPU host lease (written by scripts/create_gpu_lease.sh into gpu_lease.auto.tfvars.json)."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.gpu_reservation_id))
    error_message = "gpu_reservation_id must be the reservation UUID of an ACTIVE Blazar lease."
  }
}

variable "node_count" {
  description = "GPU bare-metal nodes to launch on the reservation; the first is the k3s server."
  type        = number
  default     = 1
  validation {
    condition     = var.node_count >= 1 && var.node_count <= 4
    error_message = "node_count must be 1..4 (and no more than the lease reserved)."
  }
}

variable "gpu_flavor" {
  description = "Nova flavor for reserved bare-metal hosts on Chameleon (the node type comes from the lease)."
  type        = string
  default     = "baremetal"
}

variable "image_name" {
  description = "Chameleon-supported image with the NVIDIA driver and CUDA preinstalled."
  type        = string
  default     = "CC-Ubuntu22.04-CUDA"
}

variable "network_name" {
  description = "Chameleon's shared tenant network."
  type        = string
  default     = "sharednet1"
}

variable "external_network" {
  description = "Pool floating IPs come from."
  type        = string
  default     = "public"
}

variable "ssh_public_key_path" {
  description = "Public half of the key used to log in as `cc` (the private key never leaves your machine)."
  type        = string
  default     = "~/.ssh/id_ed25519.pub"
}

variable "admin_cidr" {
  description = "Source range allowed to reach SSH and the Kubernetes API. Narrow it to your own address."
  type        = string
  default     = "0.0.0.0/0"
}

variable "k3s_version" {
  description = "Pinned k3s release (keep in step with infra/versions.env)."
  type        = string
  default     = "v1.33.5+k3s1"
}

variable "nvidia_driver_branch" {
  description = "NVIDIA driver branch the nodes need (keep in step with MIN_NVIDIA_DRIVER in infra/versions.env); node-prep.sh installs it when the image's is older."
  type        = number
  default     = 580
}

variable "nvidia_container_toolkit_version" {
  description = "NVIDIA Container Toolkit apt version node-prep.sh installs (keep in step with infra/versions.env)."
  type        = string
  default     = "1.17.8-1"
}
