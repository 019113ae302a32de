"""Before the aws backend creates anything: are there AWS credentials and a region the provider would use?

The official provider looks in the stack config (aws:accessKey/secretKey/profile/region), the environment
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity token or a container credentials
endpoint, AWS_REGION/AWS_DEFAULT_REGION) and the shared files (~/.aws/credentials and ~/.aws/config). Without
them its first call fails halfway through `pulumi up`; this says so up front, in one message, with nothing
created. It reads only local settings: whether the credentials are valid only AWS can say.
"""
from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

import pulumi


def _profiles(env: Mapping[str, str], home: Path) -> dict[str, dict[str, str]]:
    """Every profile of the shared credentials and config files, merged ("profile x" sections are "x")."""
    found: dict[str, dict[str, str]] = {}
    files = (env.get("AWS_SHARED_CREDENTIALS_FILE", str(home / ".aws" / "credentials")),
             env.get("AWS_CONFIG_FILE", str(home / ".aws" / "config")))
    for path in files:
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in parser.sections():
            found.setdefault(section.removeprefix("profile "), {}).update(parser[section])
    return found


def problems(env: Mapping[str, str], config: Mapping[str, str | None], home: Path) -> list[str]:
    """What is missing, as fixes; `config` holds the aws:* stack values (accessKey, secretKey, profile, region)."""
    profile_name = config.get("profile") or env.get("AWS_PROFILE") or "default"
    profile = _profiles(env, home).get(profile_name, {})
    found = []
    has_keys = ((config.get("accessKey") and config.get("secretKey"))
                or (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
                or ("aws_access_key_id" in profile and "aws_secret_access_key" in profile)
                or {"role_arn", "sso_session", "sso_start_url", "credential_process"} & set(profile)
                or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
                or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
    if not has_keys:
        found.append(f"no AWS credentials (looked at aws:accessKey/aws:secretKey, AWS_ACCESS_KEY_ID/"
                     f"AWS_SECRET_ACCESS_KEY and profile {profile_name!r} of ~/.aws/credentials): set "
                     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile that has keys, or "
                     "`pulumi config set aws:accessKey <id>` and `pulumi config set --secret aws:secretKey <key>`")
    if not (config.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or profile.get("region")):
        found.append("no AWS region: `pulumi config set aws:region <region>` (e.g. eu-west-1) or set AWS_REGION")
    return found


def require() -> None:
    """Stop the program, before any resource exists, when the provider would find no credentials or region."""
    aws = pulumi.Config("aws")
    missing = problems(os.environ, {k: aws.get(k) for k in ("accessKey", "secretKey", "profile", "region")},
                       Path.home())
    if missing:
        raise pulumi.RunError("pilothouse:backend aws cannot start; nothing was created:\n"
                              + "\n".join(f"  - {p}" for p in missing))
