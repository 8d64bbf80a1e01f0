"""`distilflow submit`: check the config travels, authenticate, start a run on Kubeflow Pipelines, follow it.

Credentials, the ways the kfp SDK takes them (the first one set wins):
  --token-file F, $KF_PIPELINES_SA_TOKEN_PATH  a bearer token read from a file, re-read on every
                                               request (in a pod: a projected service-account token)
  $DISTILFLOW_KFP_TOKEN                        an existing bearer token (`kubectl create token`, an
                                               OIDC id token) for a proxied or port-forwarded endpoint
  --cookie-file F, $DISTILFLOW_KFP_COOKIE      NAME=VALUE session cookie of Kubeflow's auth proxy
                                               (oauth2_proxy_kubeflow=..., authservice_session=...)
  none                                         a port-forwarded standalone KFP
Multi-user Kubeflow also needs --namespace (the profile namespace the pods run in).

Everything a user can get wrong (a local input path, an unreachable host, missing or rejected
credentials, an unknown namespace) is one line and exit 2, found before anything is submitted.
Imported by pipeline.py only; it imports components/lib.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.lib.core.errors import UserError
from components.lib.settings.config import PipelineConfig, config_to_json
from components.lib.sources.remote import local_inputs

TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # the kfp SDK's own variable
TOKEN_ENV = "DISTILFLOW_KFP_TOKEN"
COOKIE_ENV = "DISTILFLOW_KFP_COOKIE"
SET_CREDENTIALS = (f"set --token-file or {TOKEN_PATH_ENV} (a service-account token file), {TOKEN_ENV} "
                   f"(a bearer token) or --cookie-file / {COOKIE_ENV} (the auth proxy's session cookie)")
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
CompileFn = Callable[[PipelineConfig, Path], Path]


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    token_file: str | None = None
    cookie: str | None = None
    origin: str = "no credentials"  # how messages name them

    @classmethod
    def resolve(cls, token_file: str | None = None, cookie_file: str | None = None) -> Credentials:
        """From the flags, else the environment; unreadable files are one line naming the flag."""
        if path := token_file or os.environ.get(TOKEN_PATH_ENV):
            origin = f"--token-file {path}" if token_file else f"{TOKEN_PATH_ENV}={path}"
            return cls(token=_read_secret(path, origin), token_file=path, origin=f"the token from {origin}")
        if token := os.environ.get(TOKEN_ENV, "").strip():
            return cls(token=token, origin=f"the token in {TOKEN_ENV}")
        cookie = _read_secret(cookie_file, f"--cookie-file {cookie_file}") if cookie_file else os.environ.get(COOKIE_ENV, "").strip()
        if cookie:
            where = f"--cookie-file {cookie_file}" if cookie_file else COOKIE_ENV
            if "=" not in cookie:
                raise UserError(f"{where}: expected NAME=VALUE, e.g. oauth2_proxy_kubeflow=... (the browser's session cookie)")
            return cls(cookie=cookie, origin=f"the cookie from {where}")
        return cls()

    def headers(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {"Cookie": self.cookie} if self.cookie else {}

    def refused(self, host: str, status: int, reason: str) -> UserError:
        if self.token or self.cookie:
            return UserError(f"{host}: the KFP API rejected {self.origin} (HTTP {status} {reason}): "
                             "renew it, or use one allowed in this namespace")
        return UserError(f"{host}: the KFP API needs credentials (HTTP {status} {reason}): {SET_CREDENTIALS}")


def _read_secret(path: str, origin: str) -> str:
    try:
        value = Path(path).expanduser().read_text().strip()
    except OSError as err:
        raise UserError(f"{origin}: cannot read the file ({err.strerror or err})") from None
    if not value:
        raise UserError(f"{origin}: the file is empty")
    return value


# ---------------------------------------------------------------- before contacting the host

def check_portable(cfg: PipelineConfig) -> None:
    """Refuse inputs that are paths on this machine: a pipeline pod cannot read them."""
    for key, value in local_inputs(cfg):
        raise UserError(f"config key '{key}': {value} is a path on this machine, which pipeline pods cannot read; "
                        "put it on object storage (s3://, gs://, hf://, https://) or, if it is on a volume the pods "
                        "mount, pass --allow-local-paths")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # an auth proxy's redirect to its login page
        return None


def check_host(host: str, creds: Credentials | None = None, timeout: float = 10.0) -> dict:
    """GET healthz with the credentials; fail fast with one line (kfp.Client retries for ~25 s)."""
    creds = creds or Credentials()
    if not host.startswith(("http://", "https://")):
        raise UserError(f"--host {host}: expected an http:// or https:// URL")
    req = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz", headers=creds.headers())
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403) or 300 <= err.code < 400:  # 302: the auth proxy sends us to log in
            raise creds.refused(host, err.code, err.reason) from None
        raise UserError(f"{host}: the KFP API refused the request (HTTP {err.code} {err.reason})") from None
    except (urllib.error.URLError, OSError) as err:
        raise _api_error(host, err) from None
    try:
        return json.loads(body)
    except ValueError:
        raise UserError(f"{host}: not a KFP API (healthz answered {body[:60]!r}); point --host at the "
                        "pipelines endpoint, e.g. https://KUBEFLOW/pipeline") from None


def _server_message(err: Exception) -> str:
    try:
        body = json.loads(getattr(err, "body", None) or "{}")
    except (TypeError, ValueError):
        return ""
    text = str(body.get("error_message") or body.get("message") or "").strip()
    return f": {text.splitlines()[0][:200]}" if text else ""


def _api_error(host: str, err: Exception, creds: Credentials | None = None, namespace: str | None = None) -> UserError:
    status = getattr(err, "status", None)
    reason = str(getattr(err, "reason", "") or "").strip()
    if status == 403 and namespace:  # multi-user KFP: no access review passes for an unknown namespace
        origin = creds.origin if creds else "these credentials"
        return UserError(f"{host}: namespace '{namespace}' is unknown or not open to {origin} (HTTP {status} "
                         f"{reason}{_server_message(err)}): set --namespace to your Kubeflow profile namespace")
    if status in (401, 403) and creds is not None:
        return creds.refused(host, status, reason)
    if status:
        return UserError(f"{host}: the KFP API refused the request (HTTP {status} {reason}{_server_message(err)})")
    why = getattr(err, "reason", None) or err
    return UserError(f"{host}: cannot reach the KFP API ({str(why).splitlines()[0]})")


# ---------------------------------------------------------------- the client

def connect(host: str, namespace: str | None = None, creds: Credentials | None = None):
    """(kfp.Client, namespace it uses): credentials and namespace checked with one cheap call."""
    import kfp
    import kfp_server_api
    import urllib3

    creds = creds or Credentials()
    health = check_host(host, creds)
    if health.get("multi_user") and not namespace:
        raise UserError(f"{host}: multi-user Kubeflow needs --namespace (your profile namespace, where the pods run)")
    if namespace and health.get("multi_user") is False:
        print(f"note: {host} is a single-user KFP: --namespace {namespace} is ignored (pods run in KFP's own "
              "namespace, usually kubeflow)", file=sys.stderr)
        namespace = None
    kwargs: dict = {"host": host.rstrip("/"), "namespace": namespace or "kubeflow"}
    if creds.token_file:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(creds.token_file)  # re-read per request
    elif creds.token:
        kwargs["existing_token"] = creds.token
    elif creds.cookie:
        kwargs["cookies"] = creds.cookie
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            client = kfp.Client(**kwargs)
            client.list_experiments(page_size=1, namespace=namespace)
    except kfp_server_api.ApiException as err:
        raise _api_error(host, err, creds, namespace) from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise _api_error(host, err) from None
    return client, namespace


def submit(cfg: PipelineConfig, host: str, compile_pipeline: CompileFn, *, namespace: str | None = None,
           creds: Credentials | None = None, experiment: str | None = None, run_name: str | None = None,
           image: str | None = None, allow_local_paths: bool = False, client=None) -> dict:
    """Compile and start a run (on `client`, else a fresh connection); returns its id, UI URL and name."""
    import kfp_server_api
    import urllib3

    if image:
        cfg = cfg.with_overrides({"kubernetes.image": image})
    if not allow_local_paths:
        check_portable(cfg)
    if client is None:
        client, namespace = connect(host, namespace, creds)
    run_name = run_name or f"{cfg.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the client prints its own links
                result = client.create_run_from_pipeline_package(
                    str(package), arguments={"config_json": config_to_json(cfg)}, run_name=run_name,
                    experiment_name=experiment or cfg.tracking.experiment, namespace=namespace)
        except kfp_server_api.ApiException as err:
            raise _api_error(host, err, creds, namespace) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _api_error(host, err) from None
    run_id = result.run_id
    return {"run_id": run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run_id}", "run_name": run_name}


# ---------------------------------------------------------------- --wait

def _state(value) -> str:
    return str(value or "PENDING").upper().replace("RUNTIME_STATE_", "")


def wait_for_run(client, host: str, run_id: str, timeout_s: float | None = None, poll_s: float = 10.0,
                 echo: Callable[[str], None] = print) -> str:
    """Poll the run until it ends; echo each task's state when it changes; return the final state."""
    import kfp_server_api
    import urllib3

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    last_run = ""
    while True:
        try:
            run = client.get_run(run_id)
        except kfp_server_api.ApiException as err:
            raise _api_error(host, err) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise _api_error(host, err) from None
        details = getattr(run, "run_details", None)
        for task in getattr(details, "task_details", None) or []:
            name = task.display_name or task.task_id
            state = _state(task.state)
            if seen.get(task.task_id or name) != state:
                seen[task.task_id or name] = state
                echo(f"  {name}: {state}")
        state = _state(run.state)
        if state != last_run:
            last_run = state
            echo(f"run {run_id}: {state}")
        if state in FINAL_STATES:
            if state != "SUCCEEDED" and getattr(run, "error", None) is not None:
                message = getattr(run.error, "message", None)
                if message:
                    echo(f"run {run_id}: {str(message).splitlines()[0][:300]}")
            return state
        if deadline is not None and time.monotonic() >= deadline:
            return f"TIMEOUT:{state}"
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))


# ---------------------------------------------------------------- the CLI face

def submit_command(cfg: PipelineConfig, args, compile_pipeline: CompileFn) -> int:
    """Run `distilflow submit`; returns the exit code (bad input raises UserError: exit 2)."""
    creds = Credentials.resolve(args.token_file, args.cookie_file)
    if not args.allow_local_paths:
        check_portable(cfg)
    client, namespace = connect(args.host, args.namespace, creds)
    result = submit(cfg, args.host, compile_pipeline, namespace=namespace, creds=creds, experiment=args.experiment,
                    run_name=args.run_name, image=args.image, allow_local_paths=True, client=client)
    print(f"run id: {result['run_id']}\nurl: {result['url']}", flush=True)
    if not args.wait:
        return 0
    state = wait_for_run(client, args.host, result["run_id"], args.timeout, args.poll,
                         echo=lambda line: print(line, flush=True))
    if state.startswith("TIMEOUT:"):
        print(f"error: run {result['run_id']} is still {state.split(':', 1)[1]} after {args.timeout:g} s "
              f"(it goes on: {result['url']})", file=sys.stderr)
        return 1
    return 0 if state == "SUCCEEDED" else 1
