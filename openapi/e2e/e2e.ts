// Drives a running Liaison through openapi-fetch typed with the types openapi-typescript
// generated from openapi/openapi.json (./schema.d.ts): a patient, a care plan with goals and a
// referral, searched back, and the OperationOutcome of a failing call. tsc checks every call
// against the document before it runs. Usage: node dist/e2e.js http://127.0.0.1:PORT/fhir

import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Schemas = components["schemas"];

function check(condition: boolean, message: string): void {
  if (!condition) {
    throw new Error(message);
  }
}

async function main(baseUrl: string): Promise<void> {
  const client = createClient<paths>({
    baseUrl,
    headers: { "Content-Type": "application/fhir+json", Accept: "application/fhir+json" },
  });

  const patient: Schemas["Patient"] = {
    resourceType: "Patient",
    identifier: [{ system: "urn:mrn", value: "E2E-TS-1" }],
    name: [{ family: "Nguyen", given: ["Linh"] }],
  };
  const createdPatient = await client.POST("/Patient", { body: patient });
  check(createdPatient.response.status === 201, `create Patient: ${createdPatient.response.status}`);
  const patientId = (createdPatient.data as Schemas["Patient"]).id as string;
  const subject = { reference: `Patient/${patientId}` };

  const goalIds: string[] = [];
  for (const text of ["Return to work part-time", "Weekly therapy attendance"]) {
    const goal: Schemas["Goal"] = { resourceType: "Goal", lifecycleStatus: "active", description: { text }, subject };
    const created = await client.POST("/Goal", { body: goal });
    check(created.response.status === 201, `create Goal: ${created.response.status}`);
    goalIds.push((created.data as Schemas["Goal"]).id as string);
  }
  const plan: Schemas["CarePlan"] = {
    resourceType: "CarePlan",
    status: "active",
    intent: "plan",
    subject,
    goal: goalIds.map((id) => ({ reference: `Goal/${id}` })),
  };
  const createdPlan = await client.POST("/CarePlan", { body: plan });
  check(createdPlan.response.status === 201, `create CarePlan: ${createdPlan.response.status}`);
  const planId = (createdPlan.data as Schemas["CarePlan"]).id;

  const referral: Schemas["ServiceRequest"] = {
    resourceType: "ServiceRequest",
    status: "active",
    intent: "order",
    category: [{ coding: [{ system: "http://snomed.info/sct", code: "3457005" }] }],
    subject,
  };
  const createdReferral = await client.POST("/ServiceRequest", { body: referral });
  check(createdReferral.response.status === 201, `create ServiceRequest: ${createdReferral.response.status}`);

  const plans = await client.GET("/CarePlan", { params: { query: { patient: `Patient/${patientId}` } } });
  check(plans.response.status === 200, `search CarePlan: ${plans.response.status}`);
  const found = (plans.data?.entry ?? []).map((e) => e.resource?.id);
  check(found.length === 1 && found[0] === planId, `search CarePlan found ${JSON.stringify(found)}`);
  const referrals = await client.GET("/ServiceRequest", {
    params: { query: { subject: `Patient/${patientId}`, category: "http://snomed.info/sct|3457005" } },
  });
  check(referrals.data?.total === 1, `search ServiceRequest total ${referrals.data?.total}`);

  const bad = await client.POST("/CarePlan", { body: { ...plan, status: "bogus" } });
  check(bad.response.status === 400, `invalid CarePlan: ${bad.response.status}`);
  const issues = bad.error?.issue ?? [];
  check(
    issues.some((i) => (i.expression ?? []).includes("CarePlan.status")),
    `OperationOutcome ${JSON.stringify(bad.error)}`,
  );
  console.log("typescript client e2e: ok");
}

main(process.argv[2]).catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
