//! The SQL guard's lists, free of PostgreSQL: which built-in functions are
//! refused (and why), and for remote connections, whose functions cannot be
//! looked up, which function, operator and type names are allowed at all.
//!
//! The guard itself (`src/guard.rs`) walks PostgreSQL's own parse tree; this
//! module only answers "may a function with this name be called?". Names are
//! compared exactly (PostgreSQL folds unquoted identifiers to lower case
//! before the guard sees them; a quoted `"PG_SLEEP"` names another function,
//! which does not exist in `pg_catalog`).

/// Built-in functions refused by exact name, with the reason shown to the
/// caller (and to the model on its retry).
const DENIED_EXACT: &[(&str, &str)] = &[
    ("set_config", "it changes settings, even inside a read-only transaction"),
    (
        "current_setting",
        "it reads server settings, which generated SQL never needs (with a superuser caller they include secrets)",
    ),
    ("ts_stat", "it runs SQL text given as an argument, out of the guard's sight"),
    (
        "ts_rewrite",
        "its (tsquery, text) form runs SQL text given as an argument, out of the guard's sight",
    ),
    ("nextval", "it advances a sequence (a write)"),
    ("setval", "it sets a sequence (a write)"),
    ("currval", "it reads session state of a sequence"),
    ("lastval", "it reads session state of a sequence"),
    ("setseed", "it changes session state"),
    ("loread", "it reads a large object, outside the tables the guard checks"),
    ("lowrite", "it writes a large object"),
    ("currtid", "it reads rows of a relation named by an argument"),
    ("currtid2", "it reads rows of a relation named by an argument"),
    ("gin_clean_pending_list", "it writes an index (maintenance)"),
    (
        "obj_description",
        "it reads comments from the system catalogs, which the relation check keeps out of reach",
    ),
    (
        "col_description",
        "it reads comments from the system catalogs, which the relation check keeps out of reach",
    ),
    (
        "shobj_description",
        "it reads comments from the system catalogs, which the relation check keeps out of reach",
    ),
    ("brin_desummarize_range", "it writes an index (maintenance)"),
];

/// Built-in functions refused by name prefix, with the reason.
const DENIED_PREFIX: &[(&str, &str)] = &[
    ("query_to_xml", "it runs SQL text given as an argument, out of the guard's sight"),
    ("cursor_to_xml", "it reads an open cursor, a query the guard never saw"),
    ("table_to_xml", "it dumps a table named by an argument, past the table check"),
    ("schema_to_xml", "it dumps a whole schema"),
    ("database_to_xml", "it dumps the whole database"),
    ("lo_", "large objects: reads and writes server files and objects outside the checked tables"),
    ("dblink", "it opens connections to other databases"),
    ("txid_", "it assigns or exposes transaction ids"),
    ("binary_upgrade_", "server administration"),
    ("brin_summarize_", "it writes an index (maintenance)"),
    (
        "pg_",
        "pg_* functions administer the server or expose its internals (files, signals, locks, sleeping, notifications, replication, snapshots, transaction ids, other sessions' activity)",
    ),
];

/// `pg_*` functions that only compute on their arguments, allowed despite the prefix.
const ALLOWED_PG_FUNCTIONS: &[&str] = &[
    "pg_typeof",
    "pg_size_pretty",
    "pg_size_bytes",
    "pg_column_size",
    "pg_collation_for",
];

/// Why a function of `pg_catalog` named `name` is refused, or `None` when it
/// may be called (volatility is checked separately, on the real function).
pub fn denied_function(name: &str) -> Option<&'static str> {
    if ALLOWED_PG_FUNCTIONS.contains(&name) {
        return None;
    }
    if let Some((_, why)) = DENIED_EXACT.iter().find(|(n, _)| *n == name) {
        return Some(why);
    }
    DENIED_PREFIX
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, why)| *why)
}

/// Functions a statement for a remote PostgreSQL connection may call. The
/// remote catalog cannot be consulted, so this is an allow-list of built-ins
/// that compute on their arguments only: aggregates, window functions, math,
/// strings, dates and times, JSON, arrays, full-text search, conversions.
/// Nothing here reads a table, a file or a setting, writes, sleeps or locks.
const REMOTE_FUNCTIONS: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "string_agg",
    "array_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "range_agg",
    "range_intersect_agg",
    "grouping",
    // window functions
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // math
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "sign",
    "sqrt",
    "cbrt",
    "power",
    "pow",
    "exp",
    "ln",
    "log",
    "log10",
    "mod",
    "div",
    "pi",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "sinh",
    "cosh",
    "tanh",
    "width_bucket",
    "gcd",
    "lcm",
    "factorial",
    "scale",
    "min_scale",
    "trim_scale",
    "numeric",
    "float8",
    "float4",
    "int4",
    "int8",
    "int2",
    // strings
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "lower",
    "upper",
    "initcap",
    "btrim",
    "ltrim",
    "rtrim",
    "trim",
    "substring",
    "substr",
    "left",
    "right",
    "replace",
    "concat",
    "concat_ws",
    "position",
    "strpos",
    "split_part",
    "lpad",
    "rpad",
    "repeat",
    "reverse",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_like",
    "regexp_count",
    "regexp_instr",
    "regexp_substr",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "starts_with",
    "format",
    "translate",
    "ascii",
    "chr",
    "md5",
    "overlay",
    "normalize",
    "is_normalized",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "string_to_array",
    "string_to_table",
    "to_hex",
    "encode",
    "decode",
    "convert_from",
    "similar_to_escape",
    "text",
    "unistr",
    // formatting and conversion
    "to_char",
    "to_number",
    "to_date",
    "to_timestamp",
    // date and time
    "now",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "date_bin",
    "isfinite",
    "timezone",
    "overlaps",
    "statement_timestamp",
    "transaction_timestamp",
    "date",
    // conditionals that are plain functions
    "num_nulls",
    "num_nonnulls",
    // JSON
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "json_object",
    "jsonb_object",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_array_length",
    "jsonb_array_length",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_strip_nulls",
    "json_strip_nulls",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_path_exists",
    "jsonb_path_match",
    "json_to_record",
    "jsonb_to_record",
    "json_to_recordset",
    "jsonb_to_recordset",
    // arrays and sets
    "unnest",
    "array_length",
    "array_lower",
    "array_upper",
    "array_ndims",
    "array_dims",
    "cardinality",
    "array_position",
    "array_positions",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_remove",
    "array_replace",
    "array_to_string",
    "generate_series",
    "generate_subscripts",
    "trim_array",
    // full-text search
    "to_tsvector",
    "to_tsquery",
    "plainto_tsquery",
    "phraseto_tsquery",
    "websearch_to_tsquery",
    "ts_rank",
    "ts_rank_cd",
    "ts_headline",
    "setweight",
    "strip",
    "numnode",
    "querytree",
    // ranges
    "lower_inc",
    "upper_inc",
    "lower_inf",
    "upper_inf",
    "isempty",
    "range_merge",
    "int4range",
    "int8range",
    "numrange",
    "daterange",
    "tsrange",
    "tstzrange",
    // misc pure functions
    "pg_typeof",
    "pg_size_pretty",
];

/// Whether a remote statement may call the function `name` (unqualified or
/// qualified with `pg_catalog`).
pub fn remote_function_allowed(name: &str) -> bool {
    REMOTE_FUNCTIONS.contains(&name) && denied_function(name).is_none()
}

/// Operators a remote statement may use: comparison, arithmetic, string
/// concatenation and matching, JSON, array, range and text-search operators.
const REMOTE_OPERATORS: &[&str] = &[
    "=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "^", "|/", "||/", "@", "&",
    "|", "#", "~", "<<", ">>", "||", "~~", "!~~", "~~*", "!~~*", "~*", "!~", "!~*", "@>", "<@",
    "&&", "->", "->>", "#>", "#>>", "#-", "?", "?|", "?&", "@?", "@@", "-|-", "&<", "&>", "^@",
];

/// Whether a remote statement may use the operator `name`.
pub fn remote_operator_allowed(name: &str) -> bool {
    REMOTE_OPERATORS.contains(&name)
}

/// Types a remote statement may cast to (the names the parser produces: SQL
/// spellings such as `integer` or `double precision` arrive as `int4`, `float8`).
const REMOTE_TYPES: &[&str] = &[
    "bool",
    "boolean",
    "int2",
    "int4",
    "int8",
    "smallint",
    "integer",
    "int",
    "bigint",
    "numeric",
    "decimal",
    "float4",
    "float8",
    "real",
    "money",
    "text",
    "varchar",
    "bpchar",
    "char",
    "character",
    "name",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "json",
    "jsonb",
    "bytea",
    "inet",
    "cidr",
    "macaddr",
    "bit",
    "varbit",
    "tsvector",
    "tsquery",
    "int4range",
    "int8range",
    "numrange",
    "daterange",
    "tsrange",
    "tstzrange",
];

/// Whether a remote statement may name the type `name` (in a cast or a column definition list).
pub fn remote_type_allowed(name: &str) -> bool {
    REMOTE_TYPES.contains(&name)
}

/// Table-sampling methods allowed (the two built in; others come from extensions).
pub fn tablesample_method_allowed(name: &str) -> bool {
    matches!(name, "system" | "bernoulli")
}

/// The statement without surrounding whitespace and trailing semicolons.
/// Comments are kept: a caller that embeds the text in a larger statement
/// must put it on lines of its own (a trailing `-- comment` would otherwise
/// swallow what follows).
pub fn trim_statement(sql: &str) -> &str {
    sql.trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_functions_are_denied() {
        for name in [
            "set_config",
            "pg_sleep",
            "pg_sleep_for",
            "pg_sleep_until",
            "pg_advisory_lock",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_lock",
            "query_to_xml",
            "query_to_xmlschema",
            "query_to_xml_and_xmlschema",
            "cursor_to_xml",
            "cursor_to_xmlschema",
            "ts_stat",
            "ts_rewrite",
            "database_to_xml",
            "database_to_xmlschema",
            "database_to_xml_and_xmlschema",
            "schema_to_xml",
            "schema_to_xmlschema",
            "schema_to_xml_and_xmlschema",
            "table_to_xml",
            "table_to_xmlschema",
            "table_to_xml_and_xmlschema",
            "pg_read_file",
            "pg_read_binary_file",
            "pg_ls_dir",
            "pg_stat_file",
            "lo_import",
            "lo_export",
            "lo_get",
            "lo_open",
            "loread",
            "lowrite",
            "dblink",
            "dblink_exec",
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_reload_conf",
            "current_setting",
            "txid_current",
            "pg_current_xact_id",
            "nextval",
            "setval",
            "pg_notify",
            "pg_logical_emit_message",
            "pg_replication_origin_create",
            "pg_export_snapshot",
            "pg_stat_get_activity",
            "obj_description",
        ] {
            assert!(denied_function(name).is_some(), "{name} should be denied");
        }
    }

    #[test]
    fn ordinary_functions_pass() {
        for name in [
            "lower",
            "log",
            "lpad",
            "count",
            "date_trunc",
            "generate_series",
            "pg_typeof",
            "pg_size_pretty",
            "to_char",
            "coalesce",
            "now",
            "jsonb_build_object",
            "setweight",
        ] {
            assert!(denied_function(name).is_none(), "{name} should pass");
        }
    }

    #[test]
    fn remote_lists() {
        assert!(remote_function_allowed("count"));
        assert!(remote_function_allowed("date_trunc"));
        assert!(remote_function_allowed("pg_typeof"));
        assert!(!remote_function_allowed("pg_sleep"));
        assert!(!remote_function_allowed("set_config"));
        assert!(!remote_function_allowed("query_to_xml"));
        assert!(!remote_function_allowed("dblink"));
        assert!(!remote_function_allowed("random"));
        assert!(!remote_function_allowed("my_function"));
        assert!(remote_operator_allowed("="));
        assert!(remote_operator_allowed("->>"));
        assert!(!remote_operator_allowed("<<<"));
        assert!(remote_type_allowed("int4"));
        assert!(!remote_type_allowed("regclass"));
        assert!(tablesample_method_allowed("bernoulli"));
        assert!(!tablesample_method_allowed("system_time"));
    }

    #[test]
    fn every_remote_function_passes_the_deny_list() {
        for name in REMOTE_FUNCTIONS {
            assert!(
                denied_function(name).is_none(),
                "{name} is both allowed and denied"
            );
        }
    }

    #[test]
    fn trim_statement_cases() {
        assert_eq!(trim_statement("  SELECT 1 ;; \n"), "SELECT 1");
        assert_eq!(trim_statement("SELECT ';'"), "SELECT ';'");
        assert_eq!(trim_statement(";"), "");
    }
}
