"""The sample workloads from the notes: manifests.py loads and validates workloads/, keys.py makes the key
material some Secrets need, deploy.py deploys them with pulumi-kubernetes (Samples), and verify.py with the
checks_*.py modules checks on the live cluster that they behave as the notes say.

`verify` here is the function; its module is `infra.workloads.verify` (import names from it directly).
"""
from infra.workloads.deploy import (INGRESS, STORAGE, Samples, SamplesArgs, addon_needed, default_node_labels,
                                     grouped_urn, kubeconfig_content, resource_name, type_token)
from infra.workloads.keys import GENERATE_ANNOTATION, with_generated_keys
from infra.workloads.manifests import (GROUPS, Manifest, ManifestError, images, load_manifests, load_sources,
                                       pod_specs, validate)
from infra.workloads.verify import CHECKS, covered_samples, http_get, verify
# Imported for their @check registrations (after the harness they register with), so CHECKS is complete.
from infra.workloads import checks_pods, checks_services  # noqa: F401  isort: skip
