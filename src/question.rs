//! The question argument of ask, generate_sql, find_values and
//! add_verified_query: required, trimmed, bounded.

use crate::error::{required, DbragError, Kind};

/// Longest question accepted, in characters.
pub const MAX_QUESTION_CHARS: usize = 8000;

pub fn check_question(question: Option<&str>) -> String {
    let q = required(question, "question");
    // Bytes first: nothing is copied from a longer argument.
    if q.len() > MAX_QUESTION_CHARS * 4 + 4096 {
        DbragError::new(
            Kind::BadArgument,
            format!("question is longer than {MAX_QUESTION_CHARS} characters"),
        )
        .raise();
    }
    let q = q.trim().to_string();
    if q.is_empty() {
        DbragError::new(Kind::BadArgument, "question must not be empty").raise();
    }
    if q.chars().count() > MAX_QUESTION_CHARS {
        DbragError::new(
            Kind::BadArgument,
            format!("question is longer than {MAX_QUESTION_CHARS} characters"),
        )
        .raise();
    }
    q
}
