//! Liaison's integration suite: every test drives the real HTTP router over a real database and
//! runs once per storage engine (`sqlite::name` and `postgres::name`).
//!
//! It uses libtest-mimic instead of the built-in harness so that one list of test bodies yields a
//! trial per engine, and so that PostgreSQL trials show up as ignored (counted in the summary)
//! when no server is reachable outside CI. With `CI` set they always run.

mod audit;
mod auth;
mod bundle;
mod concurrency;
mod conditional;
mod crash;
mod crud;
mod disclosure;
mod everything;
mod examples;
mod fuzzing;
mod helpers;
mod history;
mod lifecycle;
mod limits;
mod metrics;
mod outage;
mod patch;
mod protocol;
mod referral;
mod replicas;
mod search;
mod subscription;
mod telemetry;
mod tls;
mod validation;

use helpers::{Backend, TestFn};
use libtest_mimic::{Arguments, Trial};

/// Names each test body and wraps it as a [`TestFn`].
macro_rules! tests {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((concat!(stringify!($module), "::", stringify!($name)), (|app| Box::pin($module::$name(app))) as TestFn)),*]
    };
}

fn main() {
    let args = Arguments::from_args();
    let tests: Vec<(&str, TestFn)> = tests![
        disclosure::labels_and_consents_leak_through_no_path,
        disclosure::consents_are_enforced_as_written_or_refused,
        disclosure::notifications_carry_only_what_anyone_may_see,
        replicas::two_replicas_behave_as_one_server,
        lifecycle::sigterm_drains_then_stops,
        crash::acknowledged_writes_survive_sigkill,
        fuzzing::corpus_inputs_never_fail_the_server,
        limits::slow_clients_are_cut_off,
        limits::connections_beyond_the_limit_wait,
        limits::search_size_limits_are_configurable,
        metrics::metrics_count_requests_errors_and_latency,
        outage::a_database_outage_is_503_and_recovers,
        outage::a_locked_sqlite_file_is_503_and_recovers,
        outage::sqlite_writes_reach_the_database_file_in_the_background,
        outage::postgres_stopped_and_restarted_under_load,
        telemetry::traces_join_the_callers_and_reach_the_collector,
        crud::create_assigns_id_version_and_headers,
        crud::create_ignores_client_id_and_server_meta,
        crud::assigned_ids_sort_in_creation_order,
        crud::read_returns_the_resource_as_sent,
        crud::read_of_unknown_id_is_404,
        crud::unknown_or_unsupported_type_is_404,
        crud::malformed_id_in_url_is_400,
        crud::update_with_current_if_match_makes_version_2,
        crud::update_with_stale_if_match_is_412,
        crud::update_of_unknown_id_creates_it,
        crud::update_needs_the_url_id_in_the_body,
        crud::delete_then_read_is_410_and_delete_is_idempotent,
        crud::update_after_delete_revives_the_resource,
        crud::vread_returns_each_version,
        crud::conditional_create_by_identifier_returns_the_match,
        crud::conditional_create_by_id_and_errors,
        crud::conditional_create_with_two_matches_is_412,
        crud::prefer_return_minimal_and_operation_outcome,
        crud::read_with_if_none_match_is_304,
        history::instance_history_lists_versions_newest_first,
        history::type_history_pages_through_every_version_once,
        history::since_keeps_only_later_versions,
        history::system_history_spans_types,
        history::history_errors,
        validation::bad_care_plan_names_every_problem,
        validation::resource_type_must_match_the_url,
        validation::malformed_json_is_400,
        validation::wrong_content_type_is_415,
        validation::oversized_body_is_413,
        validation::hostile_queries_ids_and_numbers_get_4xx,
        validation::missing_reference_target_is_422_and_nothing_is_stored,
        validation::reference_to_a_disallowed_type_is_400,
        validation::primitive_formats_are_checked,
        validation::contained_references_resolve,
        protocol::xml_is_refused_with_406,
        protocol::json_flavours_and_pretty_printing,
        protocol::metadata_lists_exactly_what_is_served,
        protocol::unknown_routes_and_methods_get_operation_outcomes,
        protocol::health_endpoints_answer,
        protocol::openapi_document_and_docs_page,
        protocol::serves_over_a_real_socket,
        protocol::two_servers_share_one_database,
        protocol::control_characters_versions_and_request_ids,
        protocol::start_up_rebuilds_an_outdated_index,
        concurrency::concurrent_if_match_writers_exactly_one_wins,
        concurrency::concurrent_updates_lose_nothing,
        concurrency::concurrent_conditional_creates_make_one_resource,
        concurrency::concurrent_writes_that_fail_leave_the_others_whole,
        concurrency::cancelled_writes_leave_nothing_half_done,
        examples::official_examples_round_trip,
        patch::json_patch_changes_one_field_and_reindexes,
        patch::failing_patches_change_nothing,
        patch::fhirpath_patch_operations,
        patch::validate_in_every_mode,
        conditional::conditional_update_rules,
        conditional::if_none_match_star_creates_only,
        conditional::conditional_delete_rules,
        conditional::conditional_patch_rules,
        conditional::capability_statement_matches_behaviour,
        bundle::referral_packet_lands_with_references_resolved,
        bundle::a_bad_entry_fails_the_whole_transaction,
        bundle::conditional_entries_patches_and_preconditions,
        bundle::delete_and_unlink_in_one_transaction,
        bundle::batch_isolates_failures,
        bundle::bundle_shape_and_limits,
        bundle::concurrent_transactions_stay_consistent,
        tls::https_with_tls_12_and_13_only,
        tls::mutual_tls_requires_a_client_certificate,
        tls::certificates_reload_without_restart,
        tls::unprotected_exposure_is_refused,
        auth::tokens_are_required_and_validated,
        auth::scopes_allow_exactly_their_interactions,
        auth::patient_scopes_confine_to_the_compartment,
        auth::keys_come_from_a_jwks_url_and_rotate,
        audit::every_interaction_is_audited,
        audit::requests_no_route_takes_are_audited,
        referral::referral_tasks_follow_the_state_machine,
        everything::everything_returns_the_patients_compartment_in_pages,
        subscription::notifications_reach_a_rest_hook,
        subscription::notifications_survive_a_restart,
        subscription::notifications_outlive_a_killed_server,
        subscription::two_workers_deliver_each_notification_once,
        subscription::a_failing_endpoint_sets_the_subscription_to_error,
        referral::referral_packets_run_the_rules_in_a_transaction,
        referral::care_coordination_scenario,
        audit::bundles_record_each_write_in_their_transaction,
        audit::audit_needs_its_own_scope_and_records_denials,
        audit::audit_failure_fails_the_request,
        audit::a_blocked_chain_delays_links_and_loses_no_record,
        audit::the_trail_is_found_from_other_types_and_counted_once,
        audit::tampering_breaks_the_chain,
        audit::removing_records_breaks_the_chain,
        audit::chain_verifies_under_concurrent_appends,
        search::token_search_forms,
        search::string_search_is_case_and_accent_insensitive,
        search::reference_search_forms,
        search::date_prefixes_and_partial_dates,
        search::quantity_and_number_prefixes,
        search::uri_missing_and_profile,
        search::chains_and_has,
        search::include_and_revinclude,
        search::sort_count_and_paging_links,
        search::paging_is_stable_under_concurrent_writes,
        search::summary_and_elements,
        search::post_search_and_parameter_errors,
        search::index_follows_updates_and_deletes,
        search::configured_page_size_and_count_cap,
        search::previous_links_walk_back,
        search::reference_driven_pages_hold_each_match_once,
        search::composite_parameters_pair_code_and_value,
        search::deceased_is_a_computed_boolean,
    ];

    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let postgres = helpers::postgres_available();
    match (&postgres, in_ci) {
        (Ok(()), _) => eprintln!("PostgreSQL tests run against {}", helpers::postgres_url()),
        (Err(why), true) => eprintln!("CI is set, so PostgreSQL tests run and will fail: {why}"),
        (Err(why), false) => eprintln!("PostgreSQL tests SKIPPED ({} ignored): {why}", tests.len()),
    }
    let skip_postgres = postgres.is_err() && !in_ci;

    let mut trials = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for (name, test) in &tests {
            let test = *test;
            let trial = Trial::test(format!("{}::{name}", backend.name()), move || helpers::run(backend, test));
            trials.push(trial.with_ignored_flag(backend == Backend::Postgres && skip_postgres));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
