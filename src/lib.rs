//! pg_dbrag: one PostgreSQL database as the control plane of a multi-tenant
//! "ask your data in plain language" service, with isolation enforced inside
//! the database. Each module owns one concern; this file only wires them.

use pgrx::prelude::*;

// The SQL surface, by the file that defines it (sql/*.sql wires the rest):
mod audit; // dbrag.audit_queue_status; the audit log writers
mod budget; // dbrag.budget_status: per-tenant model spend
mod catalog; // dbrag.sync_catalog, dbrag.identifier_words
mod connections; // dbrag.test/create/update/delete/activate_connection, _remote_query
mod conversation; // dbrag.last_answer; the turns of a conversation
mod crypto; // dbrag.encrypt, decrypt, encryption_key_id, rotate_key, set_llm_api_key,
            // llm_api_key_status
mod dataplane; // dbrag._dataplane_query, dbrag._dataplane_check
mod guard; // dbrag._guard_check(_remote): PostgreSQL's parse-tree guard
mod isolation; // dbrag.create/drop/adopt_tenant_schema, _sync_tenant_schema/role, _drop_tenant_role
mod llm; // dbrag._llm_complete, _llm_config; the model client
mod nl2sql; // dbrag.ask, generate_sql, explain_sql
mod prompt; // dbrag.build_prompt
mod tenant; // dbrag.set_tenant, reset_tenant, issue_token, current_tenant_id, _audit,
            // _invalidate_tenant_cache
mod value_index; // dbrag.search_values; the value index
mod verified; // dbrag.add_verified_query, dbrag.feedback

// Below the SQL surface (docs/architecture.md, "The modules"):
mod act_as; // work for a tenant, as its role
mod connection_store; // rows of control_plane.tenant_databases
mod describe; // catalog descriptions, catalog row → prompt table
mod engine; // the data-plane abstraction: local, postgres, mysql, sqlite
mod error; // error kinds and SQLSTATEs
mod gucs; // dbrag.* settings
mod history; // query_history rows, the answer cache
mod pg; // PostgreSQL plumbing: privileged SQL, subtransactions, timers, helper process
mod question; // the question argument's rules
mod remote; // the libpq client
mod scaleout; // Citus: node assertions, nested execution

pgrx::pg_module_magic!();

// Roles, schemas and types come first: everything else refers to them.
pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/control_plane.sql",
    name = "control_plane",
    requires = [tenant::current_tenant_id, tenant::_invalidate_tenant_cache]
);
pgrx::extension_sql_file!(
    "../sql/isolation.sql",
    name = "isolation",
    requires = ["control_plane"]
);
pgrx::extension_sql_file!(
    "../sql/app_isolation.sql",
    name = "app_isolation",
    requires = [
        "isolation",
        isolation::_isolation_guarded,
        isolation::_auto_isolate_mode
    ]
);
pgrx::extension_sql_file!(
    "../sql/tenant_roles.sql",
    name = "tenant_roles",
    requires = [
        "control_plane",
        isolation::_sync_tenant_role,
        isolation::_drop_tenant_role
    ]
);
pgrx::extension_sql_file!(
    "../sql/tenant_admin.sql",
    name = "tenant_admin",
    requires = ["isolation", tenant::_audit]
);
pgrx::extension_sql_file!(
    "../sql/catalog.sql",
    name = "catalog",
    requires = ["isolation", catalog::identifier_words]
);
pgrx::extension_sql_file!("../sql/nl2sql.sql", name = "nl2sql", requires = ["catalog"]);
pgrx::extension_sql_file!(
    "../sql/verified.sql",
    name = "verified",
    requires = ["nl2sql"]
);
pgrx::extension_sql_file!(
    "../sql/budget.sql",
    name = "budget",
    requires = [
        "nl2sql",
        "tenant_admin",
        tenant::_audit,
        budget::budget_status
    ]
);
pgrx::extension_sql_file!(
    "../sql/connections.sql",
    name = "connections",
    requires = ["isolation"]
);
pgrx::extension_sql_file!(
    "../sql/value_index.sql",
    name = "value_index",
    requires = ["connections"]
);
pgrx::extension_sql_file!(
    "../sql/scaleout.sql",
    name = "scaleout",
    requires = ["connections", "nl2sql"]
);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Settings named in postgresql.conf stay readable placeholders until the
    // library defines them; preloading defines them before any client runs.
    // SAFETY: a flag PostgreSQL sets while loading shared_preload_libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        warning!("pg_dbrag is not in shared_preload_libraries: secrets set in postgresql.conf are readable by every role until the library loads");
    }
    gucs::register();
    scaleout::register();
    gucs::reserve_prefix();
    tenant::init();
    scaleout::init();
    pg::citus::init();
    audit::init();
    budget::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
