"""Bad policy input is rejected with the object, the field and the reason (and never half-applied)."""

from __future__ import annotations

import pytest
import yaml

from cilia.policy import kinds as policy_kinds
from cilia.policy.errors import PolicyError
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.parse import ResourceError

validate = KindRegistry([*CORE_KINDS, *policy_kinds.KINDS]).validate

BAD = [
    ("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}""",
     "NetworkPolicy x/p: field 'spec.podSelector.matchExpressions[0].operator': 'Equals' is not one of"),
    ("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}""",
     "field 'spec.ingress[0].ports[0].port': 70000 is out of range 1-65535"),
    ("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}""",
     "field 'spec.ingress[0].from[0].ipBlock.cidr': '10.0.0.0/33' is not a valid CIDR"),
    ("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]}""",
     "field 'spec.ingress[0].from[0].ipBlock.except[0]': 192.168.0.0/16 is not inside 10.0.0.0/8"),
    ("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingres: []}""", "field 'spec.ingres': unknown field"),
    ("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 70}]}]}""",
     "field 'spec.ingress[0].ports[0].endPort': 70 must be between port 80 and 65535"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toFQDNs: [{matchName: "exa mple.com"}]}]""",
     "CiliumNetworkPolicy x/p: field 'spec.egress[0].toFQDNs[0].matchName': invalid characters in matchName"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toFQDNs: [{matchPattern: "*.exa$mple.com"}]}]""",
     "field 'spec.egress[0].toFQDNs[0].matchPattern': invalid characters in matchPattern"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchPattern: "a/b"}]}}]}]""",
     "field 'spec.egress[0].toPorts[0].rules.dns[0].matchPattern': invalid characters in matchPattern"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{port: "80"}], rules: {dns: [{matchName: x}]}}]}]""",
     "field 'spec.ingress[0].toPorts[0].rules.dns': DNS rules are egress rules"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toServices: [{k8sService: {namespace: x}}]}]""",
     "CiliumNetworkPolicy x/p: field 'spec.egress[0].toServices[0].k8sService.serviceName': is required"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toServices: [{k8sServiceSelector: {selector: {matchLabels: {a: 1}}}}]}]""",
     "field 'spec.egress[0].toServices[0].k8sServiceSelector.selector.matchLabels.a': keys and values must be strings"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toServices: [{k8sService: {serviceName: s, port: 80}}]}]""",
     "field 'spec.egress[0].toServices[0].k8sService.port': unknown field"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toServices: [{k8sService: {serviceName: s}, k8sServiceSelector: {selector: {}}}]}]""",
     "field 'spec.egress[0].toServices[0]': needs exactly one of k8sService or k8sServiceSelector"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{toServices: [{k8sService: {serviceName: s}}]}]""",
     "field 'spec.ingress[0].toServices': toServices is an egress peer"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toServices: [{k8sServiceSelector: {selector: {matchExpressions: [{key: a, operator: Bogus}]}}}]}]""",
     "toServices[0].k8sServiceSelector.selector.matchExpressions[0].operator': 'Bogus' is not one of"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toServices: [{k8sService: {serviceName: Web_1}}]}]""",
     "toServices[0].k8sService.serviceName': 'Web_1' is not a valid Service name"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [everyone]}]""", "field 'spec.ingress[0].fromEntities[0]': unknown entity 'everyone'"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
specs:
- endpointSelector: {}
- ingress: [{}]""", "field 'specs[1].endpointSelector': is required"),
    ("""apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: p, namespace: x}
spec: {endpointSelector: {}}""", "field 'metadata.namespace': CiliumClusterwideNetworkPolicy is cluster-scoped"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{icmps: [{fields: [{type: Ping}]}]}]""", "field 'spec.ingress[0].icmps[0].fields[0].type': unknown IPv4"),
    ("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromCIDRSet: [{cidr: not-a-cidr}]}]""", "field 'spec.ingress[0].fromCIDRSet[0].cidr': 'not-a-cidr' is not a valid CIDR"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(":")[-1][:40] for _t, m in BAD])
def test_bad_policies_name_object_field_and_reason(text: str, message: str) -> None:
    with pytest.raises(ResourceError) as raised:
        validate(yaml.safe_load(text))
    assert message in str(raised.value)
    assert raised.type in (PolicyError, ResourceError)
