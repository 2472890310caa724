//! `/openapi.json`, generated from the handlers' annotations, then completed with the
//! answers every route shares (auth, malformed input, limits, overload) so the document
//! names every status the service can give. `tools/test` checks it against the running
//! service with schemathesis (tests/openapi_conformance.rs).

use axum::Json;
use serde::Serialize;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{
    account_list, accounts, addresses, audit, bitcart, deposits, events, ipn, status, stream,
    subscribers, ui, withdrawals,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "chainledger", description = "Bitcoin deposits as a gapless, replayable event log"),
    paths(
        status::healthz,
        status::readyz,
        status::metrics,
        spec,
        status::status,
        accounts::create_account,
        account_list::list,
        accounts::get_account,
        accounts::balance,
        addresses::add_address,
        addresses::derived_address,
        addresses::address_totals,
        deposits::list,
        deposits::get_one,
        events::tail,
        stream::stream,
        subscribers::create,
        subscribers::list,
        subscribers::get_one,
        subscribers::replay,
        subscribers::enable,
        subscribers::rotate_secret,
        subscribers::redeliver,
        subscribers::delete,
        subscribers::deliveries,
        audit::export,
        withdrawals::create,
        ipn::balance,
        ipn::subscribe,
        bitcart::rpc,
        bitcart::spec,
        bitcart::ws::ws,
        ui::index,
        ui::script,
        ui::style,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth, &Aliases, &SharedAnswers)
)]
struct ApiDoc;

/// Every 4xx and 5xx body: a stable machine-readable `code` and a message for people.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// e.g. `invalid_field`, `malformed_json`, `unauthorized`, `not_found`.
    code: String,
    message: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// What the annotations cannot say: routes served twice (the Bitcart SDK asks for them at
/// the root), and the Bitcart endpoint's any-body.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut Document) {
        let paths = &mut openapi.paths.paths;
        // Any body, none included, is answered in JSON-RPC (an error if it is not a request).
        if let Some(body) = paths
            .get_mut("/bitcart")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
        {
            body.required = Some(utoipa::openapi::Required::False);
            let any = ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .build();
            body.content = [("application/json".to_string(), Content::new(Some(any)))].into();
        }
        // `/btc` and `/btc_ipn` take their fields from the query (GET) or a form (POST): the
        // POST is the GET with its query parameters as the form's fields.
        for path in ["/btc", "/btc_ipn"] {
            if let Some(item) = paths.get_mut(path) {
                // (The handler's annotation needs a body to document its `Bytes`.)
                if let Some(get) = item.get.as_mut() {
                    get.request_body = None;
                }
                item.post = item.get.clone().map(as_form_post);
            }
        }
        for (alias, of) in [
            ("/bitcart/", "/bitcart"),
            ("/ws", "/bitcart/ws"),
            ("/spec", "/bitcart/spec"),
            ("/ui/", "/ui"),
        ] {
            if let Some(item) = paths.get(of).cloned() {
                let mut item: PathItem = item;
                for op in operations(&mut item) {
                    op.operation_id = op.operation_id.take().map(|id| format!("{id}_alias"));
                }
                paths.insert(alias.to_string(), item);
            }
        }
    }
}

/// The answers every route shares, added where a route can give them.
struct SharedAnswers;

/// (status, component name, when).
const SHARED: &[(&str, &str, &str)] = &[
    ("400", "BadRequest", "A path, query or body that cannot be read: `invalid_path`, `invalid_query`, `malformed_json`, or a filter that means nothing (e.g. empty type names)."),
    ("401", "Unauthorized", "`unauthorized`: no token, or the wrong one."),
    ("404", "NotFound", "`not_found`: nothing has that id."),
    ("408", "RequestTimeout", "`request_timeout`: the request body did not arrive within HTTP_BODY_TIMEOUT_MS."),
    ("413", "PayloadTooLarge", "`payload_too_large`: the body is over 64 KiB."),
    ("415", "UnsupportedMediaType", "`unsupported_media_type`: the body is not `application/json`."),
    ("422", "InvalidField", "`invalid_body` (a field missing or of the wrong type) or `invalid_field` (a value out of its range), the message naming the field."),
    ("500", "Internal", "`internal`: logged with its cause, shown only as \"internal error\"."),
    ("503", "Unavailable", "`too_many_connections`: more connections than HTTP_MAX_CONNECTIONS (or HTTP_MAX_CONNECTIONS_PER_IP from one address); retry after `Retry-After` seconds."),
];

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (status, name, when) in SHARED {
            let mut response = Response::new(*when);
            response.content.insert(
                "application/json".into(),
                Content::new(Some(Ref::from_schema_name("Error"))),
            );
            if *status == "503" || *status == "401" {
                let header = if *status == "503" {
                    "Retry-After"
                } else {
                    "WWW-Authenticate"
                };
                let schema = ObjectBuilder::new().schema_type(Type::String).build();
                response.headers.insert(header.into(), Header::new(schema));
            }
            components
                .responses
                .insert(name.to_string(), RefOr::T(response));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_params = path.contains('{');
            for op in operations(item) {
                let has_params =
                    has_path_params || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                // The Bitcart endpoint answers every request with a JSON-RPC 200.
                let rpc = path.starts_with("/bitcart");
                let json_body = !rpc
                    && op
                        .request_body
                        .as_ref()
                        .is_some_and(|b| b.content.contains_key("application/json"));
                let any_body = op.request_body.is_some();
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                for (status, name, _) in SHARED {
                    let applies = match *status {
                        "400" | "422" => has_params || json_body || (any_body && !rpc),
                        "401" => secured,
                        "404" => has_path_params,
                        "408" | "413" => any_body,
                        "415" => json_body,
                        _ => true,
                    };
                    if applies {
                        op.responses
                            .responses
                            .entry(status.to_string())
                            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
                    }
                }
            }
        }
    }
}

/// The operation with its query parameters moved into an
/// `application/x-www-form-urlencoded` body.
fn as_form_post(mut op: Operation) -> Operation {
    let mut form = ObjectBuilder::new().schema_type(Type::Object);
    for p in op.parameters.take().unwrap_or_default() {
        if let Some(schema) = p.schema {
            form = form.property(&p.name, schema);
        }
        if p.required == utoipa::openapi::Required::True {
            form = form.required(&p.name);
        }
    }
    let mut body = utoipa::openapi::request_body::RequestBody::new();
    body.content.insert(
        "application/x-www-form-urlencoded".into(),
        Content::new(Some(form.build())),
    );
    body.required = Some(utoipa::openapi::Required::True);
    op.request_body = Some(body);
    op.operation_id = op.operation_id.map(|id| format!("{id}_form"));
    op
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
    ]
    .into_iter()
    .flatten()
}

#[utoipa::path(get, path = "/openapi.json", tag = "status",
    responses((status = 200, description = "this document", content_type = "application/json")))]
pub async fn spec() -> Json<Document> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves is in the document (the router's table, kept by hand
    /// in http/mod.rs, checked here against the document).
    #[test]
    fn every_route_is_documented_with_its_shared_answers() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in super::super::ROUTES {
            let op = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not documented"))[*method];
            assert!(op.is_object(), "{method} {path} is not documented");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("500") && responses.contains_key("503"));
            if path.starts_with("/v1") {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            }
        }
        let create = &paths["/v1/accounts"]["post"]["responses"];
        for status in ["400", "401", "408", "413", "415", "422"] {
            assert!(
                create.get(status).is_some(),
                "POST /v1/accounts lacks {status}"
            );
        }
    }
}
