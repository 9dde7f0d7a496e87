//! pg_dbrag's PostgreSQL-free logic.
//!
//! Everything here takes untrusted bytes (tokens, ciphertexts, model replies,
//! catalog identifiers) and must never panic on them: errors are typed per
//! module and their `Display` texts are safe to show to the calling user.

pub mod answer;
pub mod conninfo;
pub mod dataplane_target;
pub mod dialect_guard;
pub mod envelope;
pub mod frame;
pub mod introspect;
pub mod jwt;
pub mod llmhttp;
pub mod node_assertion;
pub mod prompt;
pub mod sql_text;
pub mod sqlguard;
pub mod values;
pub mod words;

pub use answer::{
    anthropic_request, extract_sql, openai_request, parse_anthropic_messages, parse_openai_chat,
    AnswerError, ModelReply,
};
pub use envelope::{key_id_of, open, seal, EnvelopeError, Key, Keyring};
pub use jwt::{sign_hs256, verify, verify_hs256, Alg, Claims, Jwks, TokenError, Verifier};
pub use words::{identifier_words, split_identifier};
