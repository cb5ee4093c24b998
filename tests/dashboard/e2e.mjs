// The dashboard in a real browser: Debian's Chromium driven by playwright-core, against the
// `steward serve` + worker + Redis that tests/dashboard.rs started. Prints one JSON object:
// {"checks": [{"name", "ok", "detail"}], "axe": {...}, "shots": [...], "keep": {...}}; the Rust
// test asserts on it. Usage: node e2e.mjs CONFIG.json (phase "main" or "expired").
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const BASE = cfg.base;
const WAIT = 20_000;

const out = { checks: [], axe: {}, shots: [], keep: {} };
const check = (name, ok, detail = '') => out.checks.push({ name, ok: Boolean(ok), detail: String(detail) });

// The whole script's budget: a hung browser must not hang the test.
const budget = setTimeout(() => {
  check('finished within the budget', false, 'the script ran past 150 s');
  console.log(JSON.stringify(out));
  process.exit(2);
}, 150_000);

// Each signed-in person gets a browser of their own, on a fresh profile (--user-data-dir).
let profiles = 0;
const launch = (width) => chromium.launchPersistentContext(`${cfg.user_data_dir}-${++profiles}`, {
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  viewport: { width, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const open = new Set();

const api = async (who, method, path, body) => {
  const res = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${cfg.tokens[who]}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
};

const startRun = async (who, workflow, inputs, ticket) => {
  const r = await api(who, 'POST', '/v1/runs', { workflow, company: 'contoso', inputs, ticket });
  if (r.status !== 201) throw new Error(`starting ${workflow}: ${r.status} ${r.text}`);
  return r.json.run;
};

const runStatus = async (run) => (await api('admin', 'GET', `/v1/runs/${run}`)).json?.summary?.status;

/** A browser context (its own cookies) with dialogs recorded and accepted. */
const session = async (width = 1280) => {
  const context = await launch(width);
  open.add(context);
  context.on('close', () => open.delete(context));
  const page = context.pages()[0] || await context.newPage();
  page.dialogs = [];
  page.on('dialog', async (d) => { page.dialogs.push(d.message()); await d.accept(); });
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  return { context, page };
};

const signIn = async (page, who, next = '/') => {
  await page.goto(BASE + next);
  await page.waitForURL(/\/login/);
  await page.getByLabel('API token').fill(cfg.tokens[who]);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL((u) => !u.pathname.startsWith('/login'));
};

const axeCheck = async (page, name) => {
  await page.evaluate(AXE + '\n;0');
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help, target: v.nodes[0]?.target }));
  });
  out.axe[name] = result;
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  check(`axe: ${name} has no serious or critical violation`, bad.length === 0, JSON.stringify(bad));
};

const shoot = async (page, name) => {
  mkdirSync(cfg.shots_dir, { recursive: true });
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: width === 390 ? 844 : 900 });
    const file = join(cfg.shots_dir, `${name}-${width}.png`);
    await page.screenshot({ path: file, fullPage: true });
    out.shots.push(file);
    if (width === 390) {
      // On a phone the page itself never scrolls sideways (wide tables scroll in their box).
      const wide = await page.evaluate(() => document.documentElement.scrollWidth);
      check(`${name} fits a 390 px screen`, wide <= 390, `${wide} px wide`);
    }
  }
  await page.setViewportSize({ width: 1280, height: 900 });
};

/** Every page gets the accessibility check and its screenshots. */
const audit = async (page, name) => {
  await axeCheck(page, name);
  if (cfg.shots_dir) await shoot(page, name);
};

/** Waits for `selector` to appear through the live updates; on timeout, says what the page had. */
const waitLive = async (page, selector) => {
  try {
    await page.waitForSelector(selector, { timeout: WAIT, state: 'attached' });
  } catch (e) {
    const live = await page.evaluate(() => {
      const r = document.querySelector('#live');
      return r ? `connected=${r.dataset.connected} updates=${r.dataset.updates} text=${r.textContent.slice(0, 600)}` : 'no live region';
    }).catch((x) => String(x));
    throw new Error(`${selector} did not appear on ${page.url()}: ${live}`);
  }
};

const csrfOf = async (page) => page.locator('input[name="_csrf"]').first().inputValue();

async function main() {
  // ---- sign in, and the login page itself ----
  {
    const { context, page } = await session();
    await page.goto(BASE + '/');
    check('an unsigned visitor is sent to the sign-in page', page.url().includes('/login'), page.url());
    await audit(page, 'login');
    await page.getByLabel('API token').fill('stw_not-a-real-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    const refused = await page.getByRole('alert').textContent();
    check('a wrong token is refused with the reason', /does not sign you in/.test(refused), refused);
    await context.close();
  }

  // ---- a run goes from queued to succeeded live, on its page and in the list ----
  const tech = await session();
  await signIn(tech.page, 'tech');
  const who = await tech.page.locator('.who').textContent();
  check('signing in with a token lands on the runs list as that technician', who.includes('tech@msp.example'), who);
  {
    const page = tech.page;
    await page.goto(BASE + '/');
    await waitLive(page, '#live[data-connected="true"]');
    await page.evaluate(() => { window.__sameDocument = 'yes'; });
    const run = await startRun('tech', 'slow', { user: 'live-list' });
    const row = page.locator(`tr[data-run="${run}"]`);
    await row.waitFor({ timeout: WAIT });
    const firstStatus = await row.getAttribute('data-status');
    await waitLive(page, `tr[data-run="${run}"][data-status="completed"]`);
    const same = await page.evaluate(() => window.__sameDocument);
    check('the runs list shows a new run and its completion without reloading', same === 'yes' && firstStatus === 'running', `first ${firstStatus}, same document ${same}`);
    await audit(page, 'runs');

    const run2 = await startRun('tech', 'slow', { user: 'live-page' });
    await page.goto(`${BASE}/runs/${run2}`);
    await page.evaluate(() => { window.__sameDocument = 'yes'; });
    const step = page.locator('svg.graph g[data-step="nap"]');
    await waitLive(page, 'svg.graph g[data-step="nap"][data-state="queued"]');
    const queuedLabel = await step.locator('text.state').textContent();
    await audit(page, 'run-queued');
    await waitLive(page, '#live .status[data-status="completed"]');
    const finalState = await step.getAttribute('data-state');
    const doneLabel = await step.locator('text.state').textContent();
    const same2 = await page.evaluate(() => window.__sameDocument);
    check('a run page follows a step from queued to succeeded live, labelled in words', same2 === 'yes' && finalState === 'succeeded' && /queued/.test(queuedLabel) && /succeeded/.test(doneLabel), `${queuedLabel} -> ${doneLabel}, same document ${same2}`);
    await audit(page, 'run-completed');
  }

  // ---- hostile inputs render inert ----
  {
    const hostile = `<script>window.__pwned=1</script>"'><img src=x onerror="window.__pwned=2">`;
    const run = await startRun('tech', 'slow', { user: hostile }, { psa: 'autotask', id: '"><b>1', title: `<svg onload="window.__pwned=3">` });
    await tech.page.goto(`${BASE}/runs/${run}`);
    const shown = await tech.page.locator('dd[data-input="user"]').textContent();
    const pwned = await tech.page.evaluate(() => window.__pwned);
    const injected = await tech.page.locator('#live img, #live script, main svg[onload]').count();
    check('hostile run inputs and ticket fields are shown as text, never run', shown === hostile && pwned === undefined && injected === 0, `shown ${JSON.stringify(shown)}, pwned ${pwned}, injected ${injected}`);
  }

  // ---- approve a gate from the inbox; the run continues ----
  {
    const alice = await session();
    await signIn(alice.page, 'alice', '/approvals');
    const run = await startRun('tech', 'gated', { user: 'gate-from-inbox' }, { psa: 'autotask', id: 'T1001', title: 'New starter: gate-from-inbox' });
    const card = alice.page.locator(`article.gate[data-run="${run}"]`);
    await card.waitFor({ timeout: WAIT });
    const cardText = await card.textContent();
    check('the inbox shows the gate live with the plan it unlocks, the instructions and the ticket', cardText.includes('apply') && cardText.includes('T1001') && cardText.includes('Company instructions'), cardText.slice(0, 400));
    await audit(alice.page, 'approvals');
    await card.getByLabel('Comment (optional)').fill('looks right to me');
    await card.getByRole('button', { name: 'Approve' }).click();
    await alice.page.waitForURL(/\/approvals$/);
    const confirmText = alice.page.dialogs.at(-1) || '';
    check('approving asks first, naming what it unlocks', /Approve gate approval of run/.test(confirmText) && /unlocks 1 step/.test(confirmText), confirmText);
    await alice.page.goto(`${BASE}/runs/${run}`);
    await waitLive(alice.page, '#live .status[data-status="completed"]');
    const timeline = await alice.page.locator('ol.timeline').textContent();
    check('after the approval the run continues to completion, the timeline naming the approver and comment', timeline.includes('alice@msp.example') && timeline.includes('looks right to me'), timeline.slice(0, 600));
    await alice.context.close();
  }

  // ---- cancel with rollback, and see the undo ----
  {
    const page = tech.page;
    const run = await startRun('tech', 'gated', { user: 'to-roll-back' });
    await page.goto(`${BASE}/runs/${run}`);
    await waitLive(page, 'svg.graph g[data-step="approval"][data-state="awaiting_approval"]');
    const why = await page.locator('ul.why').textContent();
    check('a waiting run says why: the gate and who can decide it', why.includes('approval') && why.includes('alice@msp.example'), why);
    await page.evaluate(() => { window.__sameDocument = 'yes'; });
    const form = page.locator('form[data-action="cancel_with_rollback"]');
    await form.getByLabel('Reason (optional)').fill('ticket withdrawn');
    await form.getByRole('button', { name: 'Cancel and roll back' }).click();
    await waitLive(page, '#live .status[data-status="rolled_back"]');
    const confirmText = page.dialogs.at(-1) || '';
    const undo = await page.locator('svg.graph g[data-step="prepare"] text.undo').textContent().catch(() => '');
    const timeline = await page.locator('ol.timeline').textContent();
    check('cancel with rollback asks first naming the steps it undoes', /undo what it changed \(steps prepare\)/.test(confirmText), confirmText);
    check('after cancel with rollback the page shows the undo and the reason', /undo: (done|undone|succeeded)/.test(undo) && timeline.includes('ticket withdrawn'), `${undo} | ${timeline.slice(0, 500)}`);
    await audit(page, 'run-rolled-back');
    out.keep.parked_run = await startRun('tech', 'gated', { user: 'parked' });
  }

  // ---- a technician of another company sees and does nothing of contoso's ----
  {
    const outsider = await session();
    await signIn(outsider.page, 'outsider');
    const rows = await outsider.page.locator('tr[data-run]').count();
    check('a fabrikam technician lists none of contoso\'s runs', rows === 0, `${rows} rows`);
    const res = await outsider.page.goto(`${BASE}/runs/${out.keep.parked_run}`);
    const text = await outsider.page.locator('main').textContent();
    check('a fabrikam technician cannot open a contoso run page (403)', res.status() === 403 && /may not act on this company/.test(text), `${res.status()} ${text.slice(0, 200)}`);
    await audit(outsider.page, 'forbidden');
    await outsider.page.goto(BASE + '/');
    const csrf = await csrfOf(outsider.page);
    const post = await outsider.context.request.post(`${BASE}/runs/${out.keep.parked_run}/cancel`, { form: { _csrf: csrf, rollback: 'true' }, maxRedirects: 0 });
    const status = await runStatus(out.keep.parked_run);
    check('a fabrikam technician cannot cancel a contoso run (403, run untouched)', post.status() === 403 && status === 'running', `${post.status()} ${status}`);
    const approve = await outsider.context.request.post(`${BASE}/approvals/${out.keep.parked_run}/approval`, { form: { _csrf: csrf, decision: 'approve' }, maxRedirects: 0 });
    check('a fabrikam technician cannot approve a contoso gate', approve.status() === 403, `${approve.status()}`);
    await outsider.page.goto(BASE + '/companies');
    const companies = await outsider.page.locator('main').textContent();
    check('a fabrikam technician sees only fabrikam among the companies', companies.includes('fabrikam') && !companies.includes('contoso'), companies.slice(0, 300));
    await outsider.context.close();
  }

  // ---- CSRF: a post without the session's token does nothing ----
  {
    const run = out.keep.parked_run;
    const noToken = await tech.context.request.post(`${BASE}/runs/${run}/pause`, { form: { reason: 'csrf' }, maxRedirects: 0 });
    const wrongToken = await tech.context.request.post(`${BASE}/runs/${run}/pause`, { form: { _csrf: 'x'.repeat(43), reason: 'csrf' }, maxRedirects: 0 });
    const status = await runStatus(run);
    check('a post without the CSRF token or with a wrong one is refused (403) and does nothing', noToken.status() === 403 && wrongToken.status() === 403 && status === 'running', `${noToken.status()} ${wrongToken.status()} ${status}`);
    const csrf = await csrfOf(tech.page);
    const good = await tech.context.request.post(`${BASE}/runs/${run}/pause`, { form: { _csrf: csrf, reason: 'with the token' }, maxRedirects: 0 });
    check('the same post with the session\'s token works', good.status() === 303 && (await runStatus(run)) === 'paused', `${good.status()}`);
  }

  // ---- companies pages, as an admin ----
  {
    const admin = await session();
    await signIn(admin.page, 'admin', '/companies');
    await audit(admin.page, 'companies');
    await admin.page.goto(`${BASE}/companies/contoso`);
    const text = await admin.page.locator('main').textContent();
    check('a company page shows its settings', text.includes('approvers') && text.includes('alice@msp.example'), text.slice(0, 300));
    await audit(admin.page, 'company');
    await admin.page.goto(`${BASE}/companies`);
    await admin.page.getByRole('textbox', { name: /CSV/ }).fill('id,name\nbad id!,x\n');
    await admin.page.getByRole('button', { name: 'Import' }).click();
    const cells = await admin.page.locator('table.problems td').count();
    check('a bad CSV import shows its errors by row and column in a table', cells > 0, `${cells} cells`);
    await audit(admin.page, 'import-errors');
    // Revoking sessions ends a live page's stream and sends it to sign in.
    const bob = await session();
    await signIn(bob.page, 'bob', `/runs/${out.keep.parked_run}`);
    await waitLive(bob.page, '#live[data-connected="true"]');
    const me = await api('bob', 'GET', '/v1/technicians/me');
    const ended = await api('admin', 'DELETE', `/v1/technicians/${me.json.id}/sessions`);
    await bob.page.waitForURL(/\/login\?ended=1/, { timeout: WAIT });
    const note = await bob.page.locator('main').textContent();
    check('revoking a technician\'s sessions signs their open pages out', ended.status === 200 && ended.json.ended >= 1 && /session has ended/.test(note), `${ended.status} ${ended.text}`);
    await bob.context.close();
    await admin.context.close();
  }

  // ---- a session for the Rust test to expire ----
  {
    const carol = await session();
    await signIn(carol.page, 'alice');
    const cookies = await carol.context.cookies();
    const c = cookies.find((k) => k.name === 'stw_session');
    check('the session cookie is HttpOnly and SameSite=Strict', c && c.httpOnly && c.sameSite === 'Strict', JSON.stringify(c && { httpOnly: c.httpOnly, sameSite: c.sameSite }));
    out.keep.session = c ? c.value : '';
    await carol.context.close();
  }
  check('no script error on any page', tech.page.errors.length === 0, tech.page.errors.join('; '));
  await tech.context.close();
}

async function expired() {
  const { context, page } = await session();
  await context.addCookies([{ name: 'stw_session', value: cfg.session, url: BASE, httpOnly: true, sameSite: 'Strict' }]);
  await page.goto(`${BASE}/approvals`);
  const text = await page.locator('main').textContent();
  check('an expired session is sent to sign in again, told why', page.url().includes('/login') && page.url().includes('ended=1') && /session has ended/.test(text), `${page.url()} ${text.slice(0, 200)}`);
  const csrfless = await context.request.post(`${BASE}/logout`, { form: {}, maxRedirects: 0 });
  check('an expired session cannot post', csrfless.status() === 401, `${csrfless.status()}`);
  await context.close();
}

try {
  if (cfg.phase === 'expired') await expired(); else await main();
} catch (e) {
  check('the script ran to the end', false, e && e.stack ? e.stack : String(e));
} finally {
  for (const c of [...open]) await c.close().catch(() => {});
  clearTimeout(budget);
}
console.log(JSON.stringify(out));
