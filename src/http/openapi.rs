//! The OpenAPI 3.1 document of the FHIR API, built with utoipa from the same registry that
//! drives the router: one set of operations per served type and interaction, every search
//! parameter of the type, and JSON schemas of the resources and their data types generated from
//! the embedded R4 definitions (cardinality, choice types, primitive extensions, required
//! elements). `openapi/openapi.json` is this document, checked by a test.
//!
//! It describes; it does not decide. Validation and routing stay with the registry, so the two
//! cannot drift apart: both read the same definitions.

use std::collections::{BTreeMap, BTreeSet};

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ComponentsBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::server::ServerBuilder;
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref, RefOr, Required};

use crate::fhir::definitions::{Definitions, ElementDef, Max, TypeKind};
use crate::fhir::registry::Registry;
use crate::fhir::search::ParamKind;

/// The media type of every FHIR request and response body.
const FHIR_JSON: &str = "application/fhir+json";

/// Resources that appear in bodies besides the served types.
const OTHER_RESOURCES: &[&str] = &["Bundle", "OperationOutcome", "CapabilityStatement", "Parameters"];

/// The document for the types of `registry`.
pub fn document(registry: &Registry) -> OpenApi {
    let mut schemas = Schemas::new(&registry.definitions);
    let mut paths = PathsBuilder::new();
    let mut parameters: BTreeMap<String, RefOr<Parameter>> = BTreeMap::new();
    let mut tags = Vec::new();
    for ty in registry.types() {
        let ty = ty.as_str();
        schemas.resource(ty);
        tags.push(TagBuilder::new().name(ty).description(Some(format!("The {ty} resource"))).build());
        let search_params: Vec<Ref> = registry
            .search
            .for_type(ty)
            .iter()
            .map(|p| {
                let key = format!("{ty}.{}", p.code);
                let repeats = p.kind == ParamKind::Date;
                parameters.insert(key.clone(), RefOr::T(search_parameter(&p.code, p.kind, &p.description, repeats)));
                Ref::new(format!("#/components/parameters/{key}"))
            })
            .collect();
        for (path, item) in type_paths(registry, ty, &search_params) {
            paths = paths.path(path, item);
        }
    }
    for (name, description) in RESULT_PARAMETERS {
        parameters.insert(
            (*name).to_owned(),
            RefOr::T(query(name, description, if *name == "_count" { integer(0) } else { string() })),
        );
    }
    for ty in OTHER_RESOURCES {
        schemas.resource(ty);
    }
    for (path, item) in system_paths() {
        paths = paths.path(path, item);
    }
    tags.push(TagBuilder::new().name("System").description(Some("Whole-server interactions")).build());

    let mut components = ComponentsBuilder::new()
        .security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "SMART on FHIR access token (RS256 or ES256) with system/, user/ or patient/ scopes",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "mutualTLS",
            SecurityScheme::MutualTls {
                description: Some("A client certificate from the configured CA bundle".into()),
                deprecated: None,
                extensions: None,
            },
        );
    for (name, schema) in schemas.finish() {
        components = components.schema(name, schema);
    }
    let mut components = components.build();
    components.parameters = parameters;

    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Liaison FHIR R4 API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "FHIR R4 (4.0.1) REST API for mental-health care coordination. Bodies are FHIR JSON \
                     (application/fhir+json); every error is an OperationOutcome.",
                ))
                .build(),
        )
        .servers(Some([ServerBuilder::new().url("/fhir").description(Some("this server's FHIR base")).build()]))
        .paths(paths.build())
        .components(Some(components))
        // Either credential, or none where the server runs without authorization.
        .security(Some([
            SecurityRequirement::new("bearerAuth", Vec::<String>::new()),
            SecurityRequirement::new("mutualTLS", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]))
        .tags(Some(tags))
        .build()
}

/// The result parameters every search takes (search.html#return), with their documentation.
const RESULT_PARAMETERS: &[(&str, &str)] = &[
    ("_count", "Entries per page (at most the server's maximum page size)"),
    ("_sort", "Comma-separated sort keys; a leading '-' sorts descending"),
    ("_include", "Type:param[:target] of referenced resources to add (repeatable; _include:iterate too)"),
    ("_revinclude", "Type:param of resources referring to the matches to add"),
    ("_summary", "true, text, data, count or false"),
    ("_elements", "Comma-separated top-level elements to return"),
    ("_total", "none, estimate or accurate"),
];

// ---- operations ------------------------------------------------------------------------------

/// The paths of one resource type.
fn type_paths(registry: &Registry, ty: &str, search_params: &[Ref]) -> Vec<(String, PathItem)> {
    let resource = || Ref::from_schema_name(ty);
    let read_only = registry.server_written(ty);
    let search = |id: String, summary: &str| {
        let mut op = operation(id, ty, summary);
        for p in search_params {
            op = op.parameter_ref(p.clone());
        }
        for (name, _) in RESULT_PARAMETERS {
            op = op.parameter_ref(Ref::new(format!("#/components/parameters/{name}")));
        }
        op
    };
    let conditional = |id: String, summary: &str| {
        let mut op = operation(id, ty, summary);
        for p in search_params {
            op = op.parameter_ref(p.clone());
        }
        op
    };
    let bundle = || ok_response("A Bundle of type searchset", Some(Ref::from_schema_name("Bundle").into()), false);

    let mut type_level = PathItem::new(
        HttpMethod::Get,
        search(format!("search{ty}"), &format!("Search {ty} resources"))
            .response("200", bundle())
            .response("default", outcome()),
    );
    let mut out = Vec::new();
    if read_only {
        out.push((format!("/{ty}"), type_level));
        let read = operation(format!("read{ty}"), ty, &format!("Read a {ty}"))
            .parameter(id_param())
            .response("200", ok_response(&format!("The {ty}"), Some(resource().into()), true))
            .response("default", outcome());
        out.push((format!("/{ty}/{{id}}"), PathItem::new(HttpMethod::Get, read)));
        return out;
    }
    let written = || one_of([resource().into(), Ref::from_schema_name("OperationOutcome").into()]);
    type_level.merge_operations(PathItem::new(
        HttpMethod::Post,
        operation(format!("create{ty}"), ty, &format!("Create a {ty} (conditionally with If-None-Exist)"))
            .parameter(header("If-None-Exist", "A search: create only when nothing matches (200 with the one match)"))
            .parameter(prefer())
            .request_body(Some(body(resource().into())))
            .response("201", ok_response("Created", Some(written()), true))
            .response("200", ok_response("An existing match of If-None-Exist", Some(written()), true))
            .response("default", outcome()),
    ));
    type_level.merge_operations(PathItem::new(
        HttpMethod::Put,
        conditional(format!("conditionalUpdate{ty}"), &format!("Update the one {ty} that matches the search"))
            .parameter(header("If-Match", "The version the update applies to, W/\"n\""))
            .parameter(prefer())
            .request_body(Some(body(resource().into())))
            .response("200", ok_response("Updated", Some(written()), true))
            .response("201", ok_response("Created: nothing matched", Some(written()), true))
            .response("default", outcome()),
    ));
    type_level.merge_operations(PathItem::new(
        HttpMethod::Patch,
        conditional(format!("conditionalPatch{ty}"), &format!("Patch the one {ty} that matches the search"))
            .parameter(prefer())
            .request_body(Some(patch_body()))
            .response("200", ok_response("Patched", Some(written()), true))
            .response("default", outcome()),
    ));
    type_level.merge_operations(PathItem::new(
        HttpMethod::Delete,
        conditional(format!("conditionalDelete{ty}"), &format!("Delete the {ty} that matches the search"))
            .response("204", ResponseBuilder::new().description("Deleted, or nothing matched").build())
            .response("default", outcome()),
    ));
    out.push((format!("/{ty}"), type_level));

    out.push((
        format!("/{ty}/_search"),
        PathItem::new(
            HttpMethod::Post,
            operation(format!("search{ty}ByPost"), ty, &format!("Search {ty} resources with a form body"))
                .request_body(Some(form_body(registry, ty)))
                .response("200", bundle())
                .response("default", outcome()),
        ),
    ));
    out.push((
        format!("/{ty}/_history"),
        PathItem::new(
            HttpMethod::Get,
            history_operation(format!("historyType{ty}"), ty, &format!("Every version of every {ty}")),
        ),
    ));
    let validate = |id: String, summary: &str| {
        operation(id, ty, summary)
            .request_body(Some(body(one_of([resource().into(), Ref::from_schema_name("Parameters").into()]))))
            .response(
                "200",
                ok_response(
                    "The outcome (valid or not)",
                    Some(Ref::from_schema_name("OperationOutcome").into()),
                    false,
                ),
            )
            .response("default", outcome())
    };
    out.push((
        format!("/{ty}/$validate"),
        PathItem::new(HttpMethod::Post, validate(format!("validate{ty}"), &format!("Validate a {ty}"))),
    ));

    let mut instance = PathItem::new(
        HttpMethod::Get,
        operation(format!("read{ty}"), ty, &format!("Read a {ty}"))
            .parameter(id_param())
            .parameter(header("If-None-Match", "An ETag: 304 when the resource still has that version"))
            .response("200", ok_response(&format!("The {ty}"), Some(resource().into()), true))
            .response("304", ResponseBuilder::new().description("Not modified").build())
            .response("default", outcome()),
    );
    instance.merge_operations(PathItem::new(
        HttpMethod::Put,
        operation(format!("update{ty}"), ty, &format!("Update (or create with this id) a {ty}"))
            .parameter(id_param())
            .parameter(header("If-Match", "The version the update applies to, W/\"n\" (412 when stale)"))
            .parameter(header("If-None-Match", "*: create only (412 when the resource exists)"))
            .parameter(prefer())
            .request_body(Some(body(resource().into())))
            .response("200", ok_response("Updated", Some(written()), true))
            .response("201", ok_response("Created", Some(written()), true))
            .response("default", outcome()),
    ));
    instance.merge_operations(PathItem::new(
        HttpMethod::Patch,
        operation(format!("patch{ty}"), ty, &format!("Patch a {ty} (JSON Patch or FHIRPath Patch)"))
            .parameter(id_param())
            .parameter(header("If-Match", "The version the patch applies to, W/\"n\""))
            .parameter(prefer())
            .request_body(Some(patch_body()))
            .response("200", ok_response("Patched", Some(written()), true))
            .response("default", outcome()),
    ));
    instance.merge_operations(PathItem::new(
        HttpMethod::Delete,
        operation(format!("delete{ty}"), ty, &format!("Delete a {ty} (409 while others reference it)"))
            .parameter(id_param())
            .parameter(header("If-Match", "The version the delete applies to, W/\"n\""))
            .response("204", ResponseBuilder::new().description("Deleted (or already gone)").build())
            .response("default", outcome()),
    ));
    out.push((format!("/{ty}/{{id}}"), instance));
    out.push((
        format!("/{ty}/{{id}}/_history"),
        PathItem::new(
            HttpMethod::Get,
            history_operation(format!("historyInstance{ty}"), ty, &format!("Every version of one {ty}"))
                .parameter(id_param()),
        ),
    ));
    out.push((
        format!("/{ty}/{{id}}/_history/{{vid}}"),
        PathItem::new(
            HttpMethod::Get,
            operation(format!("vread{ty}"), ty, &format!("Read one version of a {ty}"))
                .parameter(id_param())
                .parameter(
                    ParameterBuilder::new()
                        .name("vid")
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .description(Some("The version id"))
                        .schema(Some(string())),
                )
                .response("200", ok_response(&format!("That version of the {ty}"), Some(resource().into()), true))
                .response("default", outcome()),
        ),
    ));
    if ty == "Patient" {
        out.push((
            "/Patient/{id}/$everything".into(),
            PathItem::new(
                HttpMethod::Get,
                operation("everythingPatient".into(), ty, "The patient and everything in their compartment")
                    .parameter(id_param())
                    .parameter(query("_count", "Entries per page", integer(0)))
                    .parameter(query("_since", "Only resources changed since this instant", string()))
                    .parameter(query("_type", "Comma-separated resource types to include", string()))
                    .response("200", bundle())
                    .response("default", outcome()),
            ),
        ));
        out.push((
            "/Patient/{id}/$access-log".into(),
            PathItem::new(
                HttpMethod::Get,
                operation("accessLogPatient".into(), ty, "Who accessed the patient's record, and when (newest first)")
                    .parameter(id_param())
                    .parameter(query("_count", "Entries per page", integer(0)))
                    .response("200", bundle())
                    .response("default", outcome()),
            ),
        ));
    }
    out.push((
        format!("/{ty}/{{id}}/$validate"),
        PathItem::new(
            HttpMethod::Post,
            validate(format!("validate{ty}Instance"), &format!("Validate a {ty} against the stored one"))
                .parameter(id_param()),
        ),
    ));
    out
}

/// The whole-server paths.
fn system_paths() -> Vec<(String, PathItem)> {
    let public = |op: OperationBuilder| op.securities(Some(Vec::<SecurityRequirement>::new()));
    vec![
        (
            "/".into(),
            PathItem::new(
                HttpMethod::Post,
                operation("transaction".into(), "System", "A transaction or batch Bundle")
                    .request_body(Some(body(Ref::from_schema_name("Bundle").into())))
                    .parameter(prefer())
                    .response(
                        "200",
                        ok_response(
                            "A transaction-response or batch-response Bundle",
                            Some(Ref::from_schema_name("Bundle").into()),
                            false,
                        ),
                    )
                    .response("default", outcome()),
            ),
        ),
        (
            "/metadata".into(),
            PathItem::new(
                HttpMethod::Get,
                public(operation("capabilities".into(), "System", "The CapabilityStatement of this server"))
                    .response(
                        "200",
                        ok_response(
                            "The CapabilityStatement",
                            Some(Ref::from_schema_name("CapabilityStatement").into()),
                            false,
                        ),
                    )
                    .response("default", outcome()),
            ),
        ),
        (
            "/_history".into(),
            PathItem::new(
                HttpMethod::Get,
                history_operation("historySystem".into(), "System", "Every version of every resource"),
            ),
        ),
        (
            "/.well-known/smart-configuration".into(),
            PathItem::new(
                HttpMethod::Get,
                public(operation("smartConfiguration".into(), "System", "SMART on FHIR configuration"))
                    .response(
                        "200",
                        ResponseBuilder::new()
                            .description("The authorization endpoints and capabilities")
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(
                                        ObjectBuilder::new().schema_type(Type::Object).additional_properties(Some(
                                            AdditionalProperties::<Schema>::FreeForm(true),
                                        )),
                                    ))
                                    .build(),
                            )
                            .build(),
                    )
                    .response("default", outcome()),
            ),
        ),
    ]
}

fn operation(id: String, tag: &str, summary: &str) -> OperationBuilder {
    OperationBuilder::new().operation_id(Some(id)).tag(tag).summary(Some(summary))
}

fn history_operation(id: String, tag: &str, summary: &str) -> OperationBuilder {
    operation(id, tag, summary)
        .parameter(query("_count", "Entries per page (at most 1000)", integer(0)))
        .parameter(query("_since", "Only versions after this instant", string()))
        .response(
            "200",
            ok_response("A Bundle of type history, newest first", Some(Ref::from_schema_name("Bundle").into()), false),
        )
        .response("default", outcome())
}

fn id_param() -> Parameter {
    ParameterBuilder::new()
        .name("id")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("The logical id"))
        .schema(Some(string()))
        .build()
}

fn query(name: &str, description: &str, schema: RefOr<Schema>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn header(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .description(Some(description))
        .schema(Some(string()))
        .build()
}

fn prefer() -> Parameter {
    header("Prefer", "return=minimal|representation|OperationOutcome; handling=strict|lenient")
}

/// A search parameter: its value syntax is the parameter type's (search.html#ptypes), so it is a
/// string; dates may repeat (`date=ge2024-03-01&date=lt2024-03-08`).
fn search_parameter(code: &str, kind: ParamKind, description: &str, repeats: bool) -> Parameter {
    let schema: RefOr<Schema> = if repeats { ArrayBuilder::new().items(string()).into() } else { string() };
    ParameterBuilder::new()
        .name(code)
        .parameter_in(ParameterIn::Query)
        .description(Some(format!("{} ({} parameter)", description.trim(), kind.as_str())))
        .schema(Some(schema))
        .build()
}

fn body(schema: RefOr<Schema>) -> RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(FHIR_JSON, ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

fn patch_body() -> RequestBody {
    let operation = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "op",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["add", "remove", "replace", "move", "copy", "test"])),
        )
        .required("op")
        .property("path", ObjectBuilder::new().schema_type(Type::String))
        .required("path")
        .property("from", ObjectBuilder::new().schema_type(Type::String))
        .property("value", ObjectBuilder::new().schema_type(SchemaType::AnyValue));
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(
            "application/json-patch+json",
            ContentBuilder::new().schema(Some(ArrayBuilder::new().items(operation))).build(),
        )
        .content(FHIR_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Parameters"))).build())
        .build()
}

/// A form body with the search parameters of `ty` as fields.
fn form_body(registry: &Registry, ty: &str) -> RequestBody {
    let mut form = ObjectBuilder::new().schema_type(Type::Object);
    for p in registry.search.for_type(ty) {
        form = form.property(&p.code, string());
    }
    for (name, _) in RESULT_PARAMETERS {
        form = form.property(*name, string());
    }
    RequestBodyBuilder::new()
        .content("application/x-www-form-urlencoded", ContentBuilder::new().schema(Some(form)).build())
        .build()
}

/// A success response with FHIR JSON (when `schema` is given) and, for single resources, the
/// version headers.
fn ok_response(description: &str, schema: Option<RefOr<Schema>>, versioned: bool) -> Response {
    let mut response = ResponseBuilder::new().description(description);
    if let Some(schema) = schema {
        response = response.content(FHIR_JSON, ContentBuilder::new().schema(Some(schema)).build());
    }
    if versioned {
        for (name, description) in [
            ("ETag", "The version, W/\"n\""),
            ("Last-Modified", "When this version was stored"),
            ("Location", "The URL of this version (creates and updates)"),
        ] {
            response = response
                .header(name, HeaderBuilder::new().schema(Some(string())).description(Some(description)).build());
        }
    }
    response.build()
}

/// Any error: an OperationOutcome with the status R4 prescribes.
fn outcome() -> Response {
    ResponseBuilder::new()
        .description("An OperationOutcome: 400, 401, 403, 404, 405, 406, 408, 409, 410, 412, 413, 415, 422 or 503")
        .content(FHIR_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("OperationOutcome"))).build())
        .build()
}

fn string() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn integer(minimum: i64) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(minimum)).into()
}

fn one_of<const N: usize>(items: [RefOr<Schema>; N]) -> RefOr<Schema> {
    let mut one = OneOfBuilder::new();
    for item in items {
        one = one.item(item);
    }
    one.into()
}

// ---- schemas ---------------------------------------------------------------------------------

/// JSON schemas of resources and of the data types and backbone elements they use, generated
/// from the definitions on demand.
struct Schemas<'a> {
    defs: &'a Definitions,
    /// Type names or backbone paths still to describe.
    pending: Vec<String>,
    seen: BTreeSet<String>,
    done: BTreeMap<String, RefOr<Schema>>,
}

impl<'a> Schemas<'a> {
    fn new(defs: &'a Definitions) -> Self {
        Self { defs, pending: Vec::new(), seen: BTreeSet::new(), done: BTreeMap::new() }
    }

    fn resource(&mut self, ty: &str) {
        self.request(ty);
    }

    /// The name of the schema of `path` (a type, or a backbone element path), queued.
    fn request(&mut self, path: &str) -> String {
        let name = schema_name(path);
        if self.seen.insert(path.to_owned()) {
            self.pending.push(path.to_owned());
        }
        name
    }

    fn finish(mut self) -> BTreeMap<String, RefOr<Schema>> {
        while let Some(path) = self.pending.pop() {
            let schema = self.object(&path);
            self.done.insert(schema_name(&path), schema);
        }
        // Contained resources, Bundle entries and Parameters values may be any resource.
        let any = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Any FHIR resource"))
            .property("resourceType", ObjectBuilder::new().schema_type(Type::String))
            .required("resourceType")
            .property("id", ObjectBuilder::new().schema_type(Type::String))
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)));
        self.done.insert("Resource".into(), any.into());
        self.done
    }

    /// The object schema of a type or backbone element.
    fn object(&mut self, path: &str) -> RefOr<Schema> {
        let defs = self.defs;
        let mut object = ObjectBuilder::new().schema_type(Type::Object);
        if defs.is_resource_type(path) {
            object = object
                .description(Some(format!("FHIR R4 {path} (http://hl7.org/fhir/R4/{}.html)", path.to_lowercase())))
                .property("resourceType", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([path])))
                .required("resourceType");
        }
        for el in defs.children(path) {
            if el.max == Max::Zero {
                continue;
            }
            let many = el.max == Max::Many;
            for code in el.types.iter().map(|t| t.code.as_str()) {
                let key =
                    if el.choice { crate::fhir::search::path::choice_key(&el.name, code) } else { el.name.clone() };
                let value = self.value(el, code);
                let primitive = defs.kind(code) == Some(TypeKind::PrimitiveType);
                object = object.property(&key, if many { ArrayBuilder::new().items(value).into() } else { value });
                if primitive {
                    // The primitive's id and extensions (json.html#primitive), paired by position
                    // in arrays, where a value without them is null.
                    let element: RefOr<Schema> = Ref::from_schema_name(self.request("Element")).into();
                    let extension = if many {
                        ArrayBuilder::new()
                            .items(one_of([element, ObjectBuilder::new().schema_type(Type::Null).into()]))
                            .into()
                    } else {
                        element
                    };
                    object = object.property(format!("_{key}"), extension);
                }
                if el.min > 0 && !el.choice {
                    object = object.required(&key);
                }
            }
        }
        object.additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))).into()
    }

    /// The schema of one value of element `el` with type `code`.
    fn value(&mut self, el: &ElementDef, code: &str) -> RefOr<Schema> {
        if let Some(path) = el.children_path() {
            return Ref::from_schema_name(self.request(path)).into();
        }
        match (code, self.defs.kind(code)) {
            (_, Some(TypeKind::PrimitiveType)) => primitive(code),
            ("Resource" | "DomainResource", _) => Ref::from_schema_name("Resource").into(),
            // FHIRPath system types (Element.id, Extension.url) are strings.
            (_, None) => string(),
            _ => Ref::from_schema_name(self.request(code)).into(),
        }
    }
}

/// A primitive's JSON form (json.html#primitive): booleans, numbers, and strings for the rest.
fn primitive(code: &str) -> RefOr<Schema> {
    let schema = match code {
        "boolean" => ObjectBuilder::new().schema_type(Type::Boolean),
        "decimal" => ObjectBuilder::new().schema_type(Type::Number),
        "integer" => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(i64::from(i32::MIN)))
            .maximum(Some(i64::from(i32::MAX))),
        "unsignedInt" | "positiveInt" => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(i64::from(code == "positiveInt")))
            .maximum(Some(i64::from(i32::MAX))),
        _ => ObjectBuilder::new().schema_type(Type::String).description(Some(format!("FHIR {code}"))),
    };
    schema.into()
}

/// `CarePlan.activity.detail` → `CarePlanActivityDetail`.
fn schema_name(path: &str) -> String {
    path.split('.')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openapi/openapi.json` is what the code generates; `UPDATE_OPENAPI=1 cargo test --lib
    /// openapi` rewrites it.
    #[test]
    fn the_committed_document_is_current() {
        let generated = document(&Registry::r4()).to_pretty_json().expect("the document serialises") + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("openapi/openapi.json is writable");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test --lib openapi` and commit it"
        );
    }

    #[test]
    fn operations_follow_the_registry() {
        let doc = serde_json::to_value(document(&Registry::r4())).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values().filter_map(|op| op["operationId"].as_str()))
            .collect();
        for id in
            ["createCarePlan", "readCarePlan", "searchCarePlan", "updateGoal", "patchTask", "deleteServiceRequest"]
        {
            assert!(ids.contains(&id), "{id}");
        }
        assert!(ids.contains(&"readAuditEvent") && !ids.contains(&"createAuditEvent"), "the audit trail is read-only");
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "operationIds are unique");
        let status = &doc["components"]["parameters"]["CarePlan.status"];
        assert_eq!(status["in"], "query");
        assert!(status["description"].as_str().unwrap().contains("token"));
        let plan = &doc["components"]["schemas"]["CarePlan"];
        assert_eq!(plan["properties"]["activity"]["items"]["$ref"], "#/components/schemas/CarePlanActivity");
        assert!(plan["required"].as_array().unwrap().iter().any(|r| r == "status"));
        let observation = &doc["components"]["schemas"]["Observation"]["properties"];
        assert!(observation.get("valueQuantity").is_some() && observation.get("_valueString").is_some());
    }
}
