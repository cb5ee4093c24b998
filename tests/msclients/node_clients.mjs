// Microsoft's own Node clients (MSAL Node, the Graph JS client) against the Steward sandbox.
//
// Run by sandbox/tests/msclients.rs, which starts an HTTPS sandbox and sets SANDBOX_URL,
// TENANT_DOMAIN, TENANT_ID, CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, UPN_PREFIX and
// NODE_EXTRA_CA_CERTS (the sandbox's CA certificate).
//
// Nothing in the libraries is changed: only the authority and the Graph base URL point at the
// sandbox, plus the settings Microsoft documents for an authority it does not host (MSAL's
// knownAuthorities) and for Graph hosts other than its own (the Graph client's customHosts).
//
// Prints one JSON line per check ({"check", "ok", "detail"}) and exits 1 if any failed.

import { ConfidentialClientApplication } from "@azure/msal-node";
import {
  BatchRequestContent,
  BatchResponseContent,
  Client,
  GraphError,
  PageIterator,
} from "@microsoft/microsoft-graph-client";

const BASE = process.env.SANDBOX_URL.replace(/\/$/, "");
const HOST = new URL(BASE).host;
const HOSTNAME = new URL(BASE).hostname;
const TENANT_DOMAIN = process.env.TENANT_DOMAIN;
const CLIENT_ID = process.env.CLIENT_ID;
const CLIENT_SECRET = process.env.CLIENT_SECRET;
const REFRESH_TOKEN = process.env.REFRESH_TOKEN;
const PREFIX = process.env.UPN_PREFIX || "js";
const GRAPH_DEFAULT = ["https://graph.microsoft.com/.default"];

let failed = false;

function report(check, ok, detail) {
  if (!ok) failed = true;
  const text = typeof detail === "string" ? detail : JSON.stringify(detail);
  console.log(JSON.stringify({ check, ok, detail: String(text ?? "").slice(-3000) }));
}

async function run(check, fn) {
  try {
    report(check, true, await fn());
  } catch (e) {
    report(check, false, `${e?.stack ?? e}\n${e?.body ? JSON.stringify(e.body) : ""}`);
  }
}

function expect(cond, what) {
  if (!cond) throw new Error(typeof what === "string" ? what : JSON.stringify(what));
}

function msalApp() {
  return new ConfidentialClientApplication({
    auth: {
      clientId: CLIENT_ID,
      clientSecret: CLIENT_SECRET,
      authority: `${BASE}/login/${TENANT_DOMAIN}`,
      // The sandbox is not one of Microsoft's clouds: name its host as a known authority.
      knownAuthorities: [HOST],
    },
  });
}

const app = msalApp();

async function appToken() {
  const result = await app.acquireTokenByClientCredential({ scopes: GRAPH_DEFAULT });
  return result.accessToken;
}

function graphClient(getAccessToken) {
  return Client.initWithMiddleware({
    authProvider: { getAccessToken },
    baseUrl: `${BASE}/graph/`,
    defaultVersion: "v1.0",
    customHosts: new Set([HOSTNAME]),
  });
}

async function main() {
  await run("msal_client_credentials", async () => {
    const first = await app.acquireTokenByClientCredential({ scopes: GRAPH_DEFAULT });
    expect(first?.accessToken && !first.fromCache, "the first token comes from the sandbox");
    const again = await app.acquireTokenByClientCredential({ scopes: GRAPH_DEFAULT });
    expect(again.fromCache && again.accessToken === first.accessToken, "the second from MSAL's cache");
    return "from the sandbox, then from the cache";
  });

  let delegated;
  await run("msal_refresh_and_silent", async () => {
    const user = msalApp();
    // forceCache: keep what the refresh brings although no account was cached before (MSAL
    // Node's documented way in for a refresh token obtained elsewhere).
    const got = await user.acquireTokenByRefreshToken({
      refreshToken: REFRESH_TOKEN,
      scopes: GRAPH_DEFAULT,
      forceCache: true,
    });
    expect(got?.accessToken, "no token");
    expect(got.account?.username === "tech@examplemsp.com", got.account);
    const accounts = await user.getTokenCache().getAllAccounts();
    expect(accounts.length === 1, accounts);
    const silent = await user.acquireTokenSilent({ account: accounts[0], scopes: GRAPH_DEFAULT });
    expect(silent?.accessToken, "silent gave no token");
    const forced = await user.acquireTokenSilent({
      account: accounts[0],
      scopes: GRAPH_DEFAULT,
      forceRefresh: true,
    });
    expect(forced?.accessToken && !forced.fromCache, "a forced refresh goes to the sandbox");
    expect(forced.accessToken !== got.accessToken, "the forced refresh returned the old token");
    delegated = forced.accessToken;
    return `account ${accounts[0].homeAccountId}; silent fromCache=${silent.fromCache}`;
  });

  await run("graph_with_delegated_token", async () => {
    expect(delegated, "no delegated token from the refresh check");
    const client = graphClient(async () => delegated);
    const adele = await client.api("/users/adele.vance@contoso.com").get();
    expect(adele.displayName === "Adele Vance", adele);
    return adele.id;
  });

  const client = graphClient(appToken);
  const state = {};

  await run("graph_list_users_paged", async () => {
    const first = await client
      .api("/users")
      .select(["id", "userPrincipalName", "assignedPlans", "identities", "onPremisesExtensionAttributes"])
      .top(1)
      .get();
    expect(first["@odata.nextLink"]?.startsWith(`${BASE}/graph/v1.0/users?`), first["@odata.nextLink"]);
    const upns = [];
    const pages = new PageIterator(client, first, (user) => {
      upns.push(user.userPrincipalName);
      return true;
    });
    await pages.iterate();
    expect(upns.length >= 3 && new Set(upns).size === upns.length, upns);
    expect(upns.includes("adele.vance@contoso.com"), upns);
    return `${upns.length} users, one a page`;
  });

  await run("graph_create_user", async () => {
    const upn = `${PREFIX}.new.starter@${TENANT_DOMAIN}`;
    const user = await client.api("/users").post({
      accountEnabled: true,
      displayName: `${PREFIX} New Starter`,
      mailNickname: `${PREFIX}newstarter`,
      userPrincipalName: upn,
      passwordProfile: { password: "Sandbox-Pa55word!", forceChangePasswordNextSignIn: true },
    });
    expect(user.id && user.userPrincipalName === upn, user);
    state.user = user.id;
    return user.id;
  });

  await run("graph_patch_user", async () => {
    await client.api(`/users/${state.user}`).patch({ jobTitle: "Sales Executive", usageLocation: "GB" });
    const got = await client.api(`/users/${state.user}`).select("jobTitle,usageLocation").get();
    expect(got.jobTitle === "Sales Executive" && got.usageLocation === "GB", got);
    return "jobTitle and usageLocation set";
  });

  await run("graph_assign_license", async () => {
    const skus = await client.api("/subscribedSkus").get();
    const spb = skus.value.find((s) => s.skuPartNumber === "SPB");
    const user = await client
      .api(`/users/${state.user}/assignLicense`)
      .post({ addLicenses: [{ skuId: spb.skuId, disabledPlans: [] }], removeLicenses: [] });
    expect(user.id === state.user, user);
    const got = await client.api(`/users/${state.user}`).select("assignedLicenses").get();
    expect(got.assignedLicenses.some((l) => l.skuId === spb.skuId), got);
    return `SPB (${spb.skuId})`;
  });

  await run("graph_add_group_member_ref", async () => {
    const groups = await client.api("/groups").filter("displayName eq 'Retail Team'").get();
    const retail = groups.value[0];
    state.group = retail.id;
    await client
      .api(`/groups/${retail.id}/members/$ref`)
      .post({ "@odata.id": `${BASE}/graph/v1.0/directoryObjects/${state.user}` });
    const refs = await client.api(`/groups/${retail.id}/members/$ref`).get();
    const ids = refs.value.map((r) => r["@odata.id"]);
    expect(ids.some((r) => r.includes(`/directoryObjects/${state.user}`)), ids);
    return `${ids.length} member references`;
  });

  await run("graph_member_of_cast", async () => {
    const groups = await client.api(`/users/${state.user}/memberOf/graph.group`).get();
    expect(groups.value.some((g) => g.id === state.group), groups);
    return groups.value.map((g) => g.displayName);
  });

  await run("graph_manager_ref", async () => {
    const adele = await client.api("/users/adele.vance@contoso.com").get();
    await client
      .api(`/users/${state.user}/manager/$ref`)
      .put({ "@odata.id": `${BASE}/graph/v1.0/users/${adele.id}` });
    const ref = await client.api(`/users/${state.user}/manager/$ref`).get();
    expect(ref["@odata.id"]?.includes(`/directoryObjects/${adele.id}`), ref);
    const manager = await client.api(`/users/${state.user}/manager`).get();
    expect(manager.id === adele.id, manager);
    await client.api(`/users/${state.user}/manager/$ref`).delete();
    try {
      await client.api(`/users/${state.user}/manager`).get();
    } catch (e) {
      expect(e instanceof GraphError && e.statusCode === 404, e);
      return `put, got ${ref["@odata.id"]}, deleted`;
    }
    throw new Error("the manager is still there after DELETE manager/$ref");
  });

  await run("graph_batch", async () => {
    // Graph wants each request's URL relative to the version. This client's BatchRequestContent
    // strips only the scheme and host, so its users give the URL without the version (the
    // workaround for microsoft-graph-client 3.0.7 in msgraph-sdk-javascript#1451), which here
    // means the sandbox's origin and the Graph-relative path.
    const batch = new BatchRequestContent([
      { id: "user", request: new Request(`${BASE}/users/${state.user}`, { method: "GET" }) },
      { id: "skus", request: new Request(`${BASE}/subscribedSkus`, { method: "GET" }) },
    ]);
    const raw = await client.api("/$batch").post(await batch.getContent());
    const responses = new BatchResponseContent(raw);
    const user = responses.getResponseById("user");
    const skus = responses.getResponseById("skus");
    expect(user.status === 200 && skus.status === 200, raw);
    const body = await user.json();
    expect(body.id === state.user, body);
    return { user: user.status, skus: skus.status };
  });

  await run("graph_error_parsed", async () => {
    try {
      await client.api(`/users/nobody@${TENANT_DOMAIN}`).get();
    } catch (e) {
      expect(e instanceof GraphError, e);
      expect(e.statusCode === 404 && e.code === "Request_ResourceNotFound", { status: e.statusCode, code: e.code });
      expect(e.message.includes("nobody@"), e.message);
      return `${e.code}: ${e.message}`;
    }
    throw new Error("no error for an unknown user");
  });

  await run("graph_deleted_items", async () => {
    await client.api(`/users/${state.user}`).delete();
    const deleted = await client.api("/directory/deletedItems/graph.user").get();
    expect(deleted.value.some((u) => u.id === state.user), deleted);
    return `${deleted.value.length} deleted users`;
  });

  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
