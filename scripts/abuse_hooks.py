"""Schemathesis checks of StreamLens's own (scripts/abuse.sh): a rejection must say why."""
import schemathesis


@schemathesis.check
def rejection_is_clear(ctx, response, case):
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except Exception as e:
            raise AssertionError(f"a {response.status_code} without a JSON body: {e}")
        if not (isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str)):
            raise AssertionError(f"a {response.status_code} without error and message: {body}")
