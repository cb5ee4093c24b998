"""Microsoft's own Python clients (MSAL, azure-identity, msgraph-sdk) against the Steward sandbox.

Run by sandbox/tests/msclients.rs, which starts an HTTPS sandbox and sets:
  SANDBOX_URL      https://127.0.0.1:<port>
  TENANT_DOMAIN    a verified domain of the tenant (contoso.com)
  TENANT_ID        its id
  CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN   the partner app's credentials
  UPN_PREFIX       makes the users this script creates unique
  SSL_CERT_FILE / REQUESTS_CA_BUNDLE        the sandbox's CA certificate

Nothing in the libraries is changed: only the authority and the Graph base URL point at the
sandbox, plus the settings Microsoft documents for an authority it does not host (MSAL's
instance_discovery endpoint, azure-identity's disable_instance_discovery) and for Graph hosts
other than its own (the authentication provider's allowed_hosts).

Prints one JSON line per check ({"check", "ok", "detail"}) and exits 1 if any failed.
"""

import asyncio
import json
import os
import sys
import time
import traceback
from urllib.parse import urlparse

import msal
from azure.identity import ClientSecretCredential
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_http.middleware.options import ResponseHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.assigned_license import AssignedLicense
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.password_profile import PasswordProfile
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.generated.models.reference_update import ReferenceUpdate
from msgraph.generated.models.user import User
from msgraph.generated.models.user_collection_response import UserCollectionResponse
from msgraph.generated.users.item.assign_license.assign_license_post_request_body import (
    AssignLicensePostRequestBody,
)
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph_core import PageIterator
from msgraph_core.authentication import AzureIdentityAuthenticationProvider
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem

BASE = os.environ["SANDBOX_URL"].rstrip("/")
HOST = urlparse(BASE).netloc
TENANT_DOMAIN = os.environ["TENANT_DOMAIN"]
TENANT_ID = os.environ["TENANT_ID"]
CLIENT_ID = os.environ["CLIENT_ID"]
CLIENT_SECRET = os.environ["CLIENT_SECRET"]
REFRESH_TOKEN = os.environ["REFRESH_TOKEN"]
PREFIX = os.environ.get("UPN_PREFIX", "py")
GRAPH_DEFAULT = ["https://graph.microsoft.com/.default"]

results = []


_last = [time.monotonic()]


def report(check, ok, detail=""):
    results.append(ok)
    now = time.monotonic()
    seconds, _last[0] = round(now - _last[0], 2), now
    print(json.dumps({"check": check, "ok": bool(ok), "seconds": seconds, "detail": str(detail)[-3000:]}), flush=True)


def run(check, fn):
    """Runs a synchronous check; an exception fails it with its traceback."""
    try:
        detail = fn()
        report(check, True, detail)
    except Exception:  # noqa: BLE001 - every failure is reported, none stops the others
        report(check, False, traceback.format_exc())


async def run_async(check, fn):
    try:
        detail = await fn()
        report(check, True, detail)
    except Exception:  # noqa: BLE001
        report(check, False, traceback.format_exc())


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


# --- MSAL Python ----------------------------------------------------------------------------


def msal_app():
    return msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=CLIENT_SECRET,
        authority=f"{BASE}/login/{TENANT_DOMAIN}",
        # Where to ask whether the authority's host is trusted: the sandbox's own endpoint.
        instance_discovery=f"{BASE}/login/common/discovery/instance",
    )


def msal_client_credentials():
    app = msal_app()
    first = app.acquire_token_for_client(GRAPH_DEFAULT)
    expect("access_token" in first, f"no token: {first}")
    expect(first.get("token_source") == "identity_provider", first.get("token_source"))
    again = app.acquire_token_for_client(GRAPH_DEFAULT)
    expect(again.get("token_source") == "cache", f"second call not from the cache: {again.get('token_source')}")
    expect(again["access_token"] == first["access_token"], "the cached token differs")
    return "token from the sandbox, then from MSAL's cache"


def msal_refresh_and_silent():
    app = msal_app()
    got = app.acquire_token_by_refresh_token(REFRESH_TOKEN, scopes=GRAPH_DEFAULT)
    expect("access_token" in got, f"no token: {got}")
    claims = got.get("id_token_claims") or {}
    expect(claims.get("preferred_username") == "tech@examplemsp.com", f"id token claims: {claims}")
    accounts = app.get_accounts()
    expect(len(accounts) == 1, f"accounts: {accounts}")
    account = accounts[0]
    expect(account["username"] == "tech@examplemsp.com", account)
    silent = app.acquire_token_silent(GRAPH_DEFAULT, account=account)
    expect(silent and "access_token" in silent, f"silent: {silent}")
    forced = app.acquire_token_silent(GRAPH_DEFAULT, account=account, force_refresh=True)
    expect(forced and "access_token" in forced, f"forced refresh: {forced}")
    expect(forced.get("token_source") == "identity_provider", forced.get("token_source"))
    expect(forced["access_token"] != got["access_token"], "the forced refresh returned the old token")
    return f"account {account['home_account_id']}; silent from {silent.get('token_source')}, forced from {forced.get('token_source')}"


def msal_unknown_tenant():
    try:
        msal.ConfidentialClientApplication(
            CLIENT_ID,
            client_credential=CLIENT_SECRET,
            authority=f"{BASE}/login/nowhere.example",
            instance_discovery=False,
        )
    except ValueError as e:
        expect("nowhere.example" in str(e), str(e))
        return str(e)[:200]
    raise AssertionError("MSAL accepted an unknown tenant")


# --- azure-identity -------------------------------------------------------------------------


def credential():
    return ClientSecretCredential(
        TENANT_ID,
        CLIENT_ID,
        CLIENT_SECRET,
        authority=f"{BASE}/login",
        disable_instance_discovery=True,
    )


def azure_identity_client_secret():
    token = credential().get_token("https://graph.microsoft.com/.default")
    expect(token.token.count(".") == 2, "not a JWT")
    return f"expires_on {token.expires_on}"


# --- msgraph-sdk ----------------------------------------------------------------------------


def native():
    """A request configuration that hands back the SDK's native (httpx) response."""
    return RequestConfiguration(options=[ResponseHandlerOption(NativeResponseHandler())])


def graph_client():
    auth = AzureIdentityAuthenticationProvider(
        credential(), scopes=GRAPH_DEFAULT, allowed_hosts=[urlparse(BASE).hostname]
    )
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = f"{BASE}/graph/v1.0"
    return GraphServiceClient(request_adapter=adapter), adapter


async def graph_checks():
    client, adapter = graph_client()
    state = {}

    async def list_users_paged():
        query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
            top=1,
            select=["id", "userPrincipalName", "assignedPlans", "identities",
                    "onPremisesExtensionAttributes", "showInAddressList"],
        )
        first = await client.users.get(request_configuration=RequestConfiguration(query_parameters=query))
        expect(first.odata_next_link and first.odata_next_link.startswith(BASE), f"nextLink {first.odata_next_link}")
        upns = []

        def collect(user):
            upns.append(user.user_principal_name)
            return True

        pages = PageIterator(first, adapter)
        await pages.iterate(collect)
        expect(len(upns) >= 3 and len(set(upns)) == len(upns), f"users {upns}")
        expect("adele.vance@contoso.com" in upns, upns)
        return f"{len(upns)} users, one a page"

    async def create_user():
        upn = f"{PREFIX}.new.starter@{TENANT_DOMAIN}"
        user = await client.users.post(User(
            account_enabled=True,
            display_name=f"{PREFIX} New Starter",
            mail_nickname=f"{PREFIX}newstarter",
            user_principal_name=upn,
            password_profile=PasswordProfile(password="Sandbox-Pa55word!", force_change_password_next_sign_in=True),
        ))
        expect(user.id and user.user_principal_name == upn, user)
        state["user"] = user.id
        return user.id

    async def patch_user():
        await client.users.by_user_id(state["user"]).patch(User(job_title="Sales Executive", usage_location="GB"))
        got = await client.users.by_user_id(state["user"]).get(
            request_configuration=RequestConfiguration(
                query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                    select=["jobTitle", "usageLocation"]
                )
            )
        )
        expect(got.job_title == "Sales Executive" and got.usage_location == "GB", got)
        return "jobTitle and usageLocation set"

    async def assign_license():
        skus = await client.subscribed_skus.get()
        spb = next(s for s in skus.value if s.sku_part_number == "SPB")
        user = await client.users.by_user_id(state["user"]).assign_license.post(
            AssignLicensePostRequestBody(add_licenses=[AssignedLicense(sku_id=spb.sku_id)], remove_licenses=[])
        )
        expect(user.id == state["user"], user)
        got = await client.users.by_user_id(state["user"]).get(
            request_configuration=RequestConfiguration(
                query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                    select=["assignedLicenses", "assignedPlans"]
                )
            )
        )
        expect(any(str(l.sku_id) == str(spb.sku_id) for l in got.assigned_licenses), got.assigned_licenses)
        return f"SPB ({spb.sku_id})"

    async def add_group_member():
        groups = await client.groups.get()
        retail = next(g for g in groups.value if g.display_name == "Retail Team")
        state["group"] = retail.id
        await client.groups.by_group_id(retail.id).members.ref.post(
            ReferenceCreate(odata_id=f"{BASE}/graph/v1.0/directoryObjects/{state['user']}")
        )
        # The generated `ref.get()` expects bare strings where Graph answers OData references
        # ({"@odata.id": …}), so read the answer the SDK got through its native response handler.
        raw = await client.groups.by_group_id(retail.id).members.ref.get(request_configuration=native())
        expect(raw.status_code == 200, raw.status_code)
        refs = [r["@odata.id"] for r in raw.json()["value"]]
        expect(any(f"/directoryObjects/{state['user']}" in r for r in refs), refs)
        return f"{len(refs)} member references"

    async def member_of_cast():
        groups = await client.users.by_user_id(state["user"]).member_of.graph_group.get()
        expect(any(g.id == state["group"] for g in groups.value), [g.display_name for g in groups.value])
        return [g.display_name for g in groups.value]

    async def manager_ref():
        users = await client.users.get()
        adele = next(u for u in users.value if u.user_principal_name == "adele.vance@contoso.com")
        me = client.users.by_user_id(state["user"])
        await me.manager.ref.put(ReferenceUpdate(odata_id=f"{BASE}/graph/v1.0/users/{adele.id}"))
        raw = await me.manager.ref.get(request_configuration=native())
        expect(raw.status_code == 200, raw.status_code)
        ref = raw.json()["@odata.id"]
        expect(f"/directoryObjects/{adele.id}" in ref, f"manager/$ref: {ref}")
        manager = await me.manager.get()
        expect(manager.id == adele.id, manager)
        await me.manager.ref.delete()
        try:
            await me.manager.get()
        except ODataError as e:
            expect(e.response_status_code == 404, e.response_status_code)
            return f"put, got {ref}, deleted"
        raise AssertionError("the manager is still there after DELETE manager/$ref")

    async def batch():
        # msgraph-core keeps each request's absolute URL, which Graph refuses inside a batch
        # (msgraph-sdk-python#1015, msgraph-sdk-python-core#1116); the workaround its users apply
        # is to make the URL relative to the version, as Graph's JSON batching requires.
        content = BatchRequestContent()
        for request_id, info in [
            ("user", client.users.by_user_id(state["user"]).to_get_request_information()),
            ("skus", client.subscribed_skus.to_get_request_information()),
        ]:
            item = BatchRequestItem(request_information=info, id=request_id)
            item.url = item.url.replace(f"{BASE}/graph/v1.0", "", 1)
            content.add_request(request_id, item)
        response = await client.batch.post(batch_request_content=content)
        statuses = response.get_response_status_codes()
        expect(statuses == {"user": 200, "skus": 200}, statuses)
        # msgraph-core reads an inner body only when it is base64 text, so Graph's JSON bodies
        # come back empty: the statuses are what this SDK version can show.
        return statuses

    async def error_parsed():
        try:
            await client.users.by_user_id(f"nobody@{TENANT_DOMAIN}").get()
        except ODataError as e:
            expect(e.response_status_code == 404, e.response_status_code)
            expect(e.error.code == "Request_ResourceNotFound", e.error.code)
            expect("nobody@" in e.error.message, e.error.message)
            return f"{e.error.code}: {e.error.message}"
        raise AssertionError("no error for an unknown user")

    async def deleted_items():
        await client.users.by_user_id(state["user"]).delete()
        deleted = await client.directory.deleted_items.graph_user.get()
        expect(any(u.id == state["user"] for u in deleted.value), [u.id for u in deleted.value])
        return f"{len(deleted.value)} deleted users"

    for name, fn in [
        ("graph_list_users_paged", list_users_paged),
        ("graph_create_user", create_user),
        ("graph_patch_user", patch_user),
        ("graph_assign_license", assign_license),
        ("graph_add_group_member_ref", add_group_member),
        ("graph_member_of_cast", member_of_cast),
        ("graph_manager_ref", manager_ref),
        ("graph_batch", batch),
        ("graph_error_parsed", error_parsed),
        ("graph_deleted_items", deleted_items),
    ]:
        await run_async(name, fn)


def main():
    run("msal_client_credentials", msal_client_credentials)
    run("msal_refresh_and_silent", msal_refresh_and_silent)
    run("msal_unknown_tenant", msal_unknown_tenant)
    run("azure_identity_client_secret", azure_identity_client_secret)
    asyncio.run(graph_checks())
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
