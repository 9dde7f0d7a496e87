"""The model client (docs/llm-and-guard.md, README.md "Errors", SECURITY.md "Blocking calls"): OpenAI and Anthropic
wire formats against the project's fake model server on 127.0.0.1, every
failure a clear ERROR within its limit, and the wait interruptible by
statement_timeout and pg_cancel_backend. After each failure the same
connection must still work."""

import os
import threading
import time

import psycopg
import pytest
from psycopg import errors

from conftest import connect
from llm_fixture import llm_server, wait_until  # noqa: F401  (fixture)

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def model(su, llm_server):
    """The superuser session configured for the fake server (session SETs end with the connection)."""
    llm_server.reset()
    su.execute("SET dbrag.llm_provider = 'openai'")
    su.execute("SELECT set_config('dbrag.llm_url', %s, false)", (llm_server.url,))
    su.execute("SET dbrag.llm_model = 'test-model'")
    su.execute("SET dbrag.llm_timeout_ms = 5000")
    return su


def complete(conn, system="You write SQL.", prompt="how many orders?", key=KEY):
    return conn.execute("SELECT dbrag._llm_complete(%s, %s, %s)", (system, prompt, key)).fetchone()[0]


def still_works(conn):
    assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42


def test_openai_round_trip(model, llm_server):
    model.execute("SET dbrag.llm_max_tokens = 77")
    model.execute("SET dbrag.llm_temperature = 0.2")
    llm_server.script({"content": "SELECT count(*) FROM orders"})
    out = complete(model, "system text", "user question")
    assert out["text"] == "SELECT count(*) FROM orders"
    assert out["prompt_tokens"] > 0 and out["completion_tokens"] > 0
    assert out["provider"] == "openai" and out["model"] == "test-model"
    [req] = llm_server.requests()
    assert req["method"] == "POST" and req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    assert req["headers"]["content-type"] == "application/json"
    assert "x-api-key" not in req["headers"]
    body = req["body"]
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "system", "content": "system text"},
                                {"role": "user", "content": "user question"}]
    assert body["max_tokens"] == 77
    assert body["temperature"] == 0.2


def test_anthropic_round_trip(model, llm_server):
    model.execute("SET dbrag.llm_provider = 'anthropic'")
    llm_server.script({"content": "SELECT 1"})
    out = complete(model, "system text", "user question")
    assert out["text"] == "SELECT 1" and out["provider"] == "anthropic"
    assert out["prompt_tokens"] > 0 and out["completion_tokens"] > 0
    [req] = llm_server.requests()
    assert req["path"] == "/v1/messages"
    assert req["headers"]["x-api-key"] == KEY
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req["headers"]
    body = req["body"]
    assert body["model"] == "test-model"
    assert body["system"] == "system text"
    assert body["messages"] == [{"role": "user", "content": "user question"}]
    assert isinstance(body["max_tokens"], int)


def test_no_key_sends_no_credentials(model, llm_server):
    complete(model, key=None)
    [req] = llm_server.requests()
    assert "authorization" not in req["headers"] and "x-api-key" not in req["headers"]


def test_full_endpoint_url_is_used_as_given(model, llm_server):
    model.execute("SELECT set_config('dbrag.llm_url', %s, false)", (llm_server.url + "/chat/completions/",))
    complete(model)
    assert llm_server.requests()[0]["path"] == "/v1/chat/completions"


def test_http_500_is_a_model_error(model, llm_server):
    llm_server.script({"status": 500, "content": "backend exploded"})
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000"
    assert "HTTP 500" in str(e.value) and "backend exploded" in str(e.value)
    still_works(model)


def test_http_429_names_the_rate_limit_and_retry_after(model, llm_server):
    llm_server.script({"status": 429, "content": "Rate limit reached", "headers": {"Retry-After": "7"}})
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000"
    msg = str(e.value)
    assert "rate-limiting" in msg and "HTTP 429" in msg and "7 s" in msg
    assert e.value.diag.message_hint
    still_works(model)


def test_anthropic_overloaded_error_message_is_passed_on(model, llm_server):
    model.execute("SET dbrag.llm_provider = 'anthropic'")
    llm_server.script({"status": 529, "content": "Overloaded"})
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000" and "Overloaded" in str(e.value)
    still_works(model)


def test_body_that_is_not_json(model, llm_server):
    llm_server.script({"raw_body": "<html>502 Bad Gateway</html>", "headers": {"Content-Type": "text/html"}})
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000" and "not a JSON" in str(e.value)
    still_works(model)


def test_empty_answer(model, llm_server):
    llm_server.script({"content": ""})
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000" and "empty answer" in str(e.value)
    still_works(model)


def test_oversized_body_is_refused_not_buffered(model, llm_server):
    llm_server.script({"raw_body": "x" * (5 * 1024 * 1024)})
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000" and "over 4 MiB" in str(e.value)
    still_works(model)


def test_api_key_never_appears_in_errors(model, llm_server):
    llm_server.script({"status": 401, "content": f"Incorrect API key provided: {KEY}"})
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000"
    text = " ".join(filter(None, [str(e.value), e.value.diag.message_detail, e.value.diag.message_hint]))
    assert KEY not in text and "[redacted]" in text and "HTTP 401" in text
    still_works(model)


def test_connection_refused(model):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    model.execute("SELECT set_config('dbrag.llm_url', %s, false)", (f"http://127.0.0.1:{port}/v1",))
    t0 = time.monotonic()
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "39000" and "could not reach" in str(e.value)
    assert time.monotonic() - t0 < 3
    still_works(model)


def test_model_slower_than_the_timeout(model, llm_server):
    model.execute("SET dbrag.llm_timeout_ms = 300")
    llm_server.script({"content": "SELECT 1", "delay_ms": 3000})
    t0 = time.monotonic()
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    elapsed = time.monotonic() - t0
    assert e.value.sqlstate == "57014"
    assert "did not answer within 300 ms" in str(e.value)
    assert 0.25 < elapsed < 1.0, elapsed
    still_works(model)


def test_a_slow_model_within_the_timeout_answers(model, llm_server):
    model.execute("SET dbrag.llm_timeout_ms = 3000")
    llm_server.script({"content": "SELECT 2", "delay_ms": 300})
    assert complete(model)["text"] == "SELECT 2"


def test_cancel_interrupts_a_hung_model(model, llm_server):
    model.execute("SET dbrag.llm_timeout_ms = 60000")
    pid = model.execute("SELECT pg_backend_pid()").fetchone()[0]
    llm_server.script({"hang": True})
    cancelled_at = []

    def cancel():
        time.sleep(0.5)
        with connect() as other:
            cancelled_at.append(time.monotonic())
            assert other.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]

    t = threading.Thread(target=cancel)
    t.start()
    with pytest.raises(errors.QueryCanceled) as e:
        complete(model)
    done = time.monotonic()
    t.join()
    assert "user request" in str(e.value)
    assert done - cancelled_at[0] < 1.0, done - cancelled_at[0]
    still_works(model)
    # The next call on the same backend goes through.
    llm_server.script({"content": "SELECT 3"})
    assert complete(model)["text"] == "SELECT 3"


def test_statement_timeout_interrupts_a_hung_model(model, llm_server):
    model.execute("SET dbrag.llm_timeout_ms = 60000")
    model.execute("SET statement_timeout = '500ms'")
    llm_server.script({"hang": True})
    t0 = time.monotonic()
    with pytest.raises(errors.QueryCanceled) as e:
        complete(model)
    elapsed = time.monotonic() - t0
    assert "statement timeout" in str(e.value)
    assert 0.4 < elapsed < 1.5, elapsed
    model.execute("RESET statement_timeout")
    still_works(model)


def test_abandoned_io_thread_ends_on_its_own(model, llm_server):
    """After a timeout the backend stops waiting; the I/O thread it left
    behind ends by its socket timeout (model timeout + 2 s grace)."""
    pid = model.execute("SELECT pg_backend_pid()").fetchone()[0]
    task_dir = f"/proc/{pid}/task"
    if not os.path.isdir(task_dir):
        pytest.skip("the server's /proc is not visible from the tests")
    threads = lambda: len(os.listdir(task_dir))  # noqa: E731
    assert threads() == 1
    model.execute("SET dbrag.llm_timeout_ms = 200")
    llm_server.script({"hang": True})
    with pytest.raises(errors.QueryCanceled):
        complete(model)
    assert threads() == 2  # still waiting on the socket
    assert wait_until(lambda: threads() == 1, timeout=5.0)
    still_works(model)


def test_no_url_configured(su):
    su.execute("SET dbrag.llm_url = ''")
    with pytest.raises(psycopg.Error) as e:
        complete(su)
    assert e.value.sqlstate == "55000" and "dbrag.llm_url" in str(e.value)
    assert "ALTER SYSTEM" in e.value.diag.message_hint


def test_bad_url_and_provider(model):
    model.execute("SET dbrag.llm_url = 'ftp://127.0.0.1/v1'")
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "22023"
    model.execute("SET dbrag.llm_url = 'http://user:hunter2@127.0.0.1:9/v1?key=abc'")
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "22023" and "hunter2" not in str(e.value) and "abc" not in str(e.value)
    model.execute("SET dbrag.llm_url = 'http://127.0.0.1:9/v1'")
    model.execute("SET dbrag.llm_provider = 'gemini'")
    with pytest.raises(psycopg.Error) as e:
        complete(model)
    assert e.value.sqlstate == "22023" and "openai or anthropic" in e.value.diag.message_hint
    still_works(model)


def test_llm_functions_are_superuser_only(tenants):
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.admin_role) as ops:
        for conn in (a, ops):
            with pytest.raises(errors.InsufficientPrivilege):
                complete(conn)
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("SELECT dbrag._llm_config(%s)", (tenants.a,))


def test_model_settings_are_superuser_only(tenants):
    with tenants.conn(tenants.a_role) as a:
        with pytest.raises(errors.InsufficientPrivilege):
            a.execute("SET dbrag.llm_url = 'http://127.0.0.1:1/v1'")


def test_tenant_override_of_url_model_and_provider(model, tenants, llm_server):
    model.execute("UPDATE control_plane.tenants SET settings = settings || %s::jsonb WHERE tenant_id = %s",
                  ('{"llm_url": "http://127.0.0.1:9/own/v1", "llm_model": "tenant-model", '
                   '"llm_provider": "anthropic"}', tenants.a))
    a = model.execute("SELECT dbrag._llm_config(%s)", (tenants.a,)).fetchone()[0]
    assert a["url"] == "http://127.0.0.1:9/own/v1" and a["model"] == "tenant-model"
    assert a["provider"] == "anthropic" and a["url_is_tenant_override"] is True
    b = model.execute("SELECT dbrag._llm_config(%s)", (tenants.b,)).fetchone()[0]
    assert b["url"] == llm_server.url and b["model"] == "test-model"
    assert b["provider"] == "openai" and b["url_is_tenant_override"] is False
    # A model-only override keeps the global URL, so the global key may go there.
    model.execute("UPDATE control_plane.tenants SET settings = %s::jsonb WHERE tenant_id = %s",
                  ('{"llm_model": "other"}', tenants.b))
    b = model.execute("SELECT dbrag._llm_config(%s)", (tenants.b,)).fetchone()[0]
    assert b["model"] == "other" and b["url_is_tenant_override"] is False


def test_tenant_override_of_wrong_type_is_refused(model, tenants):
    model.execute("UPDATE control_plane.tenants SET settings = %s::jsonb WHERE tenant_id = %s",
                  ('{"llm_url": 42}', tenants.a))
    with pytest.raises(psycopg.Error) as e:
        model.execute("SELECT dbrag._llm_config(%s)", (tenants.a,))
    assert e.value.sqlstate == "22023" and "llm_url" in str(e.value)
    still_works(model)


def test_concurrent_calls_do_not_serialize(llm_server, database):
    """Four backends each wait 400 ms on the model at once: the waits overlap."""
    llm_server.reset()
    llm_server.rules({"contains": "parallel", "content": "SELECT 1", "delay_ms": 400})
    conns = [connect() for _ in range(4)]
    try:
        for c in conns:
            c.execute("SELECT set_config('dbrag.llm_url', %s, false)", (llm_server.url,))
            c.execute("SET dbrag.llm_model = 'm'")
        errs = []

        def run(c):
            try:
                complete(c, prompt="parallel please")
            except Exception as exc:  # surfaced below
                errs.append(exc)

        t0 = time.monotonic()
        threads = [threading.Thread(target=run, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        assert not errs, errs
        assert elapsed < 1.2, elapsed
    finally:
        for c in conns:
            c.close()
        llm_server.reset()
