//! `/openapi.json`, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    accounts, addresses, audit, deposits, events, ipn, status, stream, subscribers, withdrawals,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "chainledger", description = "Bitcoin deposits as a gapless, replayable event log"),
    paths(
        status::status,
        accounts::create_account,
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
        subscribers::delete,
        subscribers::deliveries,
        audit::export,
        withdrawals::create,
        ipn::balance,
        ipn::subscribe,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
