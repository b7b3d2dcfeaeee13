# Chameleon Cloud (CHI@UC / CHI@TACC) is OpenStack: the official provider works unchanged.
# Credentials come from the environment (OS_* from an openrc, or OS_CLOUD + clouds.yaml
# outside git); the provider block deliberately sets none.
terraform {
  required_version = ">= 1.5.0"
  required_providers {
    openstack = {
      source  = "terraform-provider-openstack/openstack"
      version = "~> 3.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
}

provider "openstack" {}
