"""Drives a running Liaison with the Python client that openapi-python-client generated from
openapi/openapi.json: a patient, a care plan with goals and a referral, searched back, and the
OperationOutcome of a failing call. Usage: python e2e.py http://127.0.0.1:PORT/fhir
"""

import sys

from liaison_client import Client
from liaison_client.api.care_plan import create_care_plan, search_care_plan
from liaison_client.api.goal import create_goal
from liaison_client.api.patient import create_patient, read_patient
from liaison_client.api.practitioner import create_practitioner
from liaison_client.api.service_request import create_service_request, search_service_request
from liaison_client.models import (
    Bundle,
    CarePlan,
    Goal,
    OperationOutcome,
    Patient,
    Practitioner,
    ServiceRequest,
)


def created(response, model):
    """The resource a create answered with, which must be a 201 of the right type."""
    assert response.status_code == 201, (response.status_code, response.content[:500])
    assert isinstance(response.parsed, model), type(response.parsed)
    assert response.headers.get("etag") == 'W/"1"', response.headers
    return response.parsed


def matches(response):
    """The ids of a searchset's matches."""
    assert response.status_code == 200, (response.status_code, response.content[:500])
    bundle = response.parsed
    assert isinstance(bundle, Bundle), type(bundle)
    assert bundle.type_ == "searchset", bundle.type_
    return sorted(e.resource.id for e in bundle.entry or [] if e.search and e.search.mode == "match")


def main(base_url):
    client = Client(base_url=base_url, raise_on_unexpected_status=True)

    patient = created(
        create_patient.sync_detailed(
            client=client,
            body=Patient.from_dict(
                {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:mrn", "value": "E2E-PY-1"}],
                    "name": [{"family": "Rivera", "given": ["Sam"]}],
                    "birthDate": "1990-04",
                }
            ),
        ),
        Patient,
    )
    subject = {"reference": f"Patient/{patient.id}"}
    psychiatrist = created(
        create_practitioner.sync_detailed(
            client=client,
            body=Practitioner.from_dict({"resourceType": "Practitioner", "name": [{"family": "Okafor"}]}),
        ),
        Practitioner,
    )

    goals = [
        created(
            create_goal.sync_detailed(
                client=client,
                body=Goal.from_dict(
                    {
                        "resourceType": "Goal",
                        "lifecycleStatus": "active",
                        "description": {"text": text},
                        "subject": subject,
                    }
                ),
            ),
            Goal,
        )
        for text in ["Sleep seven hours a night", "PHQ-9 below 10"]
    ]
    plan = created(
        create_care_plan.sync_detailed(
            client=client,
            body=CarePlan.from_dict(
                {
                    "resourceType": "CarePlan",
                    "status": "active",
                    "intent": "plan",
                    "title": "Depression treatment plan",
                    "subject": subject,
                    "goal": [{"reference": f"Goal/{g.id}"} for g in goals],
                }
            ),
        ),
        CarePlan,
    )
    referral = created(
        create_service_request.sync_detailed(
            client=client,
            body=ServiceRequest.from_dict(
                {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}],
                    "code": {"text": "Medication review"},
                    "subject": subject,
                    "performer": [{"reference": f"Practitioner/{psychiatrist.id}"}],
                }
            ),
        ),
        ServiceRequest,
    )

    # Searched back through the generated search operations.
    assert matches(search_care_plan.sync_detailed(client=client, patient=f"Patient/{patient.id}", status="active")) == [
        plan.id
    ]
    referrals = search_service_request.sync_detailed(
        client=client,
        subject=f"Patient/{patient.id}",
        category="http://snomed.info/sct|3457005",
        performer=f"Practitioner/{psychiatrist.id}",
    )
    assert matches(referrals) == [referral.id]
    read = read_patient.sync_detailed(client=client, id=patient.id)
    assert read.status_code == 200 and read.parsed.name[0].family == "Rivera"

    # A failing call answers with an OperationOutcome the client parses.
    bad = create_care_plan.sync_detailed(
        client=client,
        body=CarePlan.from_dict({"resourceType": "CarePlan", "status": "bogus", "intent": "plan", "subject": subject}),
    )
    assert bad.status_code == 400, bad.status_code
    assert isinstance(bad.parsed, OperationOutcome), type(bad.parsed)
    assert any("CarePlan.status" in (i.expression or []) for i in bad.parsed.issue), bad.parsed.to_dict()
    missing = read_patient.sync_detailed(client=client, id="no-such-patient")
    assert missing.status_code == 404 and isinstance(missing.parsed, OperationOutcome)
    assert missing.parsed.issue[0].code == "not-found"
    print("python client e2e: ok")


if __name__ == "__main__":
    main(sys.argv[1])
