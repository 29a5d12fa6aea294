"""EndpointRecord: everything the agent persists about one endpoint, and the one list of its fields.

The API's `Endpoint` (cilia.api.models) extends this model with what is not persisted (state,
policy status), so a field is declared once, here. Records written by earlier versions carried a
`state` field: it is ignored on load (the state machine, not the file, says what state an
endpoint is in).
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class EndpointRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    id: int
    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    host_ifindex: int
    mac: str
    host_mac: str
    ipv4: str | None
    ipv6: str | None
    gateway_ipv4: str | None
    gateway_ipv6: str | None
    pod_namespace: str
    pod_name: str
    pod_uid: str = ""
    infra_container_id: str = ""
    identity: int
    # the API calls them `labels`; the file keeps the name it always had
    identity_labels: list[str] = Field(serialization_alias="labels",
                                       validation_alias=AliasChoices("identity_labels", "labels"))
    created_at: float
    extra_labels: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EndpointRecord:
        return cls.model_validate(data)

    def fields(self) -> dict[str, Any]:
        """Field name -> value (what the API model is built from)."""
        return {name: getattr(self, name) for name in type(self).model_fields}
