#!/usr/bin/env python3
"""Extract the compact FHIR R4 definitions Liaison validates against.

Reads the official, unmodified R4 4.0.1 specification files (one resource per file, as HL7
publishes them in the CC0 npm package hl7.fhir.r4.examples) from DIR and writes
src/fhir/definitions/r4.json, which the server embeds at build time. Run it only when the
definitions change; the server and the tests never read DIR.

    npm pack hl7.fhir.r4.examples@4.0.1 && tar xzf hl7.fhir.r4.examples-4.0.1.tgz
    python3 tools/extract_definitions.py package

It also writes src/fhir/definitions/search-parameters.json: the SearchParameters of the resource
types Liaison serves, each expression cut down to the part for that type.

Output shape (keys are short because the file is parsed at every start-up):
  {"types": {Name: {"kind": k, "summary": [top-level summary element names],
                    "base": b, "elements": [[path, min, max, types, binding?, ref?]]}},
   "valueSets": {url: [[system, [code, ...]], ...]}}
  types   -- type codes; a Reference or canonical carries its allowed targets: "Reference(Patient|Group)"
  binding -- the value set url of a *required* binding whose codes could be enumerated
  ref     -- contentReference, e.g. "#QuestionnaireResponse.item"
"""

import json
import os
import sys

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


def load_all(src, resource_type):
    for name in sorted(os.listdir(src)):
        if name.startswith(resource_type + "-") and name.endswith(".json"):
            with open(os.path.join(src, name), encoding="utf-8") as f:
                yield json.load(f)


def type_code(t):
    """The FHIR type of one ElementDefinition.type entry (System.String for ids means id/string)."""
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext["url"] == FHIR_TYPE_EXT:
                return ext.get("valueUrl") or ext.get("valueUri")
        return "string"
    targets = [p[len(SD_PREFIX):] for p in t.get("targetProfile", []) if p.startswith(SD_PREFIX)]
    if code in ("Reference", "canonical") and targets:
        return f"{code}({'|'.join(targets)})"
    return code


def concepts(concept_list):
    for c in concept_list:
        yield c["code"]
        yield from concepts(c.get("concept", []))


def expand(url, value_sets, code_systems, seen=()):
    """Enumerate a value set as [(system, codes)], or None when it cannot be enumerated here
    (external code systems such as SNOMED CT, UCUM, BCP-47 or MIME types, or filters)."""
    url = url.split("|")[0]
    vs = value_sets.get(url)
    if vs is None or url in seen:
        return None
    compose = vs.get("compose", {})
    if compose.get("exclude"):
        return None
    out = []
    for inc in compose.get("include", []):
        if inc.get("filter"):
            return None
        for nested in inc.get("valueSet", []):
            sub = expand(nested, value_sets, code_systems, seen + (url,))
            if sub is None:
                return None
            out.extend(sub)
        system = inc.get("system")
        if system is None:
            continue
        if inc.get("concept"):
            out.append((system, [c["code"] for c in inc["concept"]]))
            continue
        cs = code_systems.get(system)
        if cs is None or cs.get("content") not in ("complete", None) or not cs.get("concept"):
            return None
        out.append((system, list(concepts(cs["concept"]))))
    return out or None


# The resource types Liaison serves (src/fhir/registry.rs), and the common parameters of all.
SERVED = ["CarePlan", "CareTeam", "Condition", "Encounter", "Goal", "Observation", "Organization",
          "Patient", "Practitioner", "PractitionerRole", "QuestionnaireResponse", "ServiceRequest",
          "Task", "AuditEvent", "Subscription", "Consent"]
COMMON = ["_id", "_lastUpdated", "_tag", "_profile", "_security"]


def split_union(expression):
    """Top-level '|' alternatives of a FHIRPath expression."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expression):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return parts


def for_base(expression, base):
    """The alternatives of `expression` that start at `base` (shared parameters list many)."""
    mine = []
    for part in split_union(expression):
        bare = part.lstrip("(")
        if bare.startswith(base + ".") or bare == base:
            mine.append(part)
    return " | ".join(mine)


def search_parameters(src):
    out = {t: [] for t in SERVED}
    every = list(load_all(src, "SearchParameter"))
    by_url = {sp["url"]: sp for sp in every}
    for sp in every:
        # The package also holds the specification's example SearchParameters (example-reference
        # is a second Condition "subject"): examples of the format, not parameters R4 defines.
        if sp["id"].startswith("example"):
            continue
        for base in sp.get("base", []):
            if base in ("Resource", "DomainResource") and sp["code"] in COMMON:
                targets = SERVED
                expr_base = "Resource"
            elif base in SERVED:
                targets = [base]
                expr_base = base
            else:
                continue
            for t in targets:
                expression = for_base(sp.get("expression", ""), expr_base)
                if expr_base == "Resource":
                    expression = expression.replace("Resource.", t + ".")
                if not expression and sp["type"] != "special":
                    continue
                row = {"code": sp["code"], "type": sp["type"], "expression": expression,
                       "description": sp.get("description", "").split("\n")[0][:300]}
                if sp.get("target"):
                    row["target"] = sorted(sp["target"])
                if sp.get("component"):
                    row["component"] = [
                        {"definition": c["definition"].rsplit("/", 1)[-1], "expression": c["expression"],
                         "type": by_url[c["definition"]]["type"]}
                        for c in sp["component"]
                    ]
                out[t].append(row)
    for t in out:
        out[t].sort(key=lambda r: r["code"])
    return out


def patient_compartment(src):
    """The search parameters that put each served type in a Patient's compartment."""
    for cd in load_all(src, "CompartmentDefinition"):
        if cd.get("code") == "Patient":
            return {r["code"]: r.get("param", []) for r in cd.get("resource", []) if r["code"] in SERVED}
    return None


def write_compartment(src, dest_dir):
    compartment = patient_compartment(src)
    if compartment is None:
        return
    dest = os.path.join(dest_dir, "patient-compartment.json")
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(compartment, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"patient compartment of {len(compartment)} types -> {os.path.normpath(dest)}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    src = sys.argv[1]
    sds = [
        r
        for r in load_all(src, "StructureDefinition")
        if r["kind"] in ("primitive-type", "complex-type", "resource")
        and r.get("derivation") != "constraint"
    ]
    value_sets = {r["url"]: r for r in load_all(src, "ValueSet")}
    code_systems = {r["url"]: r for r in load_all(src, "CodeSystem")}

    types, expanded = {}, {}
    for sd in sds:
        elements = []
        for el in sd["snapshot"]["element"]:
            if "." not in el["path"]:
                continue
            row = [el["path"], el["min"], el["max"], [type_code(t) for t in el.get("type", [])]]
            binding = el.get("binding", {})
            vs_url = binding.get("valueSet", "").split("|")[0]
            if binding.get("strength") == "required" and vs_url:
                if vs_url not in expanded:
                    expanded[vs_url] = expand(vs_url, value_sets, code_systems)
                row.append(vs_url if expanded[vs_url] else None)
            if "contentReference" in el:
                row += [None] * (5 - len(row)) + [el["contentReference"]]
            while row[-1] is None:
                row.pop()
            elements.append(row)
        base = sd.get("baseDefinition", "")
        summary = [
            el["path"].split(".", 1)[1]
            for el in sd["snapshot"]["element"]
            if el["path"].count(".") == 1 and el.get("isSummary")
        ]
        types[sd["id"]] = {
            "kind": sd["kind"],
            "summary": [name.replace("[x]", "") for name in summary] if sd["kind"] == "resource" else [],
            "abstract": sd.get("abstract", False),
            "base": base[len(SD_PREFIX):] if base.startswith(SD_PREFIX) else None,
            "elements": elements,
        }
    out = {
        "fhirVersion": "4.0.1",
        "types": types,
        "valueSets": {url: codes for url, codes in sorted(expanded.items()) if codes},
    }
    dest = os.path.join(os.path.dirname(__file__), "..", "src", "fhir", "definitions", "r4.json")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    print(f"{len(types)} types, {len(out['valueSets'])} required value sets -> {os.path.normpath(dest)}")
    params = search_parameters(src)
    dest = os.path.join(os.path.dirname(dest), "search-parameters.json")
    with open(dest, "w", encoding="utf-8") as f:
        json.dump(params, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{sum(map(len, params.values()))} search parameters -> {os.path.normpath(dest)}")
    write_compartment(src, os.path.dirname(dest))


if __name__ == "__main__":
    main()
