/* Fellowship web console: plain JavaScript, no framework, no build step.
 *
 * It is an ordinary client of the public API: create with POST /v1/session/create,
 * watch and talk over the WebSocket, control with pause/resume/DELETE, poll the status.
 *
 * Rules it keeps:
 * - Every piece of text from the server (messages, names, errors) is rendered with
 *   textContent, never as HTML.
 * - The full-control token lives in sessionStorage only (this tab). The share link
 *   carries the observer token alone, in the fragment (#observe=…), which browsers
 *   never send to a server. A fork opens in a new tab without its token in any URL:
 *   the tab is handed a one-time key (#fork=…) to an entry in localStorage that it
 *   reads and deletes at once.
 * - Rendering is idempotent: a message is keyed by its history position (`turn`), and
 *   an event whose `seq` was already seen is skipped, so a reconnect with `since`, a
 *   fresh `history` or a reload never shows a message twice.
 */
"use strict";

(() => {
  const STORAGE_KEY = "fellowship.console.session";
  const OBSERVE_PARAM = "observe";
  const FORK_PARAM = "fork";
  // A fork's session, left in localStorage for the tab that opens it; stale ones go.
  const HANDOFF_PREFIX = "fellowship.console.handoff.";
  const HANDOFF_MAX_AGE_MS = 10 * 60 * 1000;
  const HANDOFF_KEY_BYTES = 16;
  const DOWNLOAD_URL_LIFETIME_MS = 10000;
  const RECONNECT_FIRST_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  const STATUS_COALESCE_MS = 250;
  const NEAR_BOTTOM_PX = 80;
  // Well-separated hues, handed out to bots in order of their first turn: everyone who
  // reads the same history (owner, observers, after a reload) sees the same colours.
  const BOT_HUES = [265, 140, 25, 330, 180, 50, 0, 210];
  const COPIED_LABEL_MS = 2000;
  // What the loop is busy with, for a line under the transcript when no bubble shows it.
  const ACTIVITY = {
    dispatching: "A bot is writing…",
    orchestrating: "Choosing who speaks next…",
    summarizing: "Summarizing the conversation…",
  };
  const DEFAULT_CONFIG = {
    poll_seconds: 5,
    max_message_chars: 8000,
    max_name_chars: 64,
    max_spec_bytes: 262144,
    full_token_prefix: "fsk_",
    observer_token_prefix: "fso_",
    machines: ["lifecycle", "loop"],
  };
  // How the header names the default backend (GET /healthz `backend.kind`).
  const BACKEND_KINDS = {
    embedded: "Embedded llama.cpp",
    mock: "Built-in mock",
    external: "LLM server",
  };
  // While the backend is on its way up, its status is asked for this often.
  const BACKEND_BUSY_POLL_MS = 1000;
  const BACKEND_BUSY = new Set(["checking", "building", "starting", "restarting"]);
  // The error code of a turn waiting for a backend that cannot be reached (told once).
  const BACKEND_UNREACHABLE = "backend_unreachable";
  // WebSocket close codes (docs/api.md) after which reconnecting cannot help.
  const CLOSE_NORMAL = 1000;
  const CLOSE_BAD_REQUEST = 4000;
  const CLOSE_FORBIDDEN = 4003;
  const CLOSE_NOT_FOUND = 4004;
  const CLOSE_TOO_SLOW = 4008;
  const CLOSE_NO_SEAT = 4009;
  // A talker coming back (reconnect, reload) may find its old seat not yet freed: the
  // server notices a dropped socket only after a while. Retry that many times first.
  const TALKER_SEAT_RETRIES = 6;

  const $ = (id) => document.getElementById(id);

  const ui = {
    connection: $("connection"),
    backend: $("backend"),
    backendText: $("backend-text"),
    backendProgress: $("backend-progress"),
    backendDetail: $("backend-detail"),
    setup: $("setup"),
    library: $("library"),
    editor: $("spec-editor"),
    create: $("create"),
    problems: $("spec-problems"),
    problemsTitle: $("spec-problems-title"),
    problemList: $("spec-problem-list"),
    openToken: $("open-token"),
    open: $("open"),
    session: $("session"),
    sessionTitle: $("session-title"),
    sessionName: $("session-name"),
    newSession: $("new-session"),
    notice: $("session-notice"),
    warnings: $("session-warnings"),
    ownerControls: $("owner-controls"),
    pause: $("pause"),
    resume: $("resume"),
    end: $("end"),
    ownerTokenBox: $("owner-token-box"),
    ownerToken: $("owner-token"),
    showToken: $("show-token"),
    copyToken: $("copy-token"),
    shareBox: $("share-box"),
    shareLink: $("share-link"),
    copyLink: $("copy-link"),
    exportFormat: $("export-format"),
    download: $("download"),
    forkDialog: $("fork-dialog"),
    forkForm: $("fork-form"),
    forkTurn: $("fork-turn"),
    forkOverrides: $("fork-overrides"),
    forkStart: $("fork-start"),
    forkProblems: $("fork-problems"),
    forkProblemsTitle: $("fork-problems-title"),
    forkProblemList: $("fork-problem-list"),
    forkOpened: $("fork-opened"),
    forkLink: $("fork-link"),
    forkCreate: $("fork-create"),
    forkCancel: $("fork-cancel"),
    joinForm: $("join-form"),
    talkerName: $("talker-name"),
    diagram: $("diagram"),
    diagramState: $("diagram-state"),
    transcript: $("transcript"),
    emptyNote: $("empty-note"),
    activity: $("activity"),
    activityText: $("activity-text"),
    composer: $("composer"),
    message: $("message"),
    send: $("send"),
    composerNote: $("composer-note"),
    status: {
      state: $("st-state"),
      loop: $("st-loop"),
      mode: $("st-mode"),
      turns: $("st-turns"),
      messages: $("st-messages"),
      time: $("st-time"),
      tokens: $("st-tokens"),
      tokensBar: $("st-tokens-bar"),
      members: $("st-members"),
      backends: $("st-backends"),
      backendsRow: $("st-backends-row"),
    },
  };

  const app = {
    config: DEFAULT_CONFIG,
    /** {id, token, observerToken, talkerName} — `token` only for full control. */
    session: null,
    status: null,
    lifecycle: null,
    loopState: null,
    ended: false,
    /** Every event up to `session_end` has been received: nothing more will come. */
    streamComplete: false,
    lastSeq: null,
    /** turn → <li> */
    messages: new Map(),
    /** bot → <li>: a reply being generated without a reserved position. */
    pending: new Map(),
    socket: null,
    role: null,
    connected: false,
    /** The current socket was accepted / has delivered a session event. */
    socketOpened: false,
    socketStreamed: false,
    seatRetries: 0,
    reconnectDelay: RECONNECT_FIRST_MS,
    reconnectTimer: null,
    pollTimer: null,
    statusTimer: null,
    statusInFlight: false,
    diagramNodes: new Map(),
    /** bot name (lower case) → hue */
    botHues: new Map(),
    followTranscript: true,
    backendTimer: null,
    /** The notice shows that this session's backend cannot be reached. */
    backendNotice: false,
    /** The history position the fork dialog copies up to. */
    forkTurn: null,
  };

  // --- small helpers --------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  /** The token for read calls: full if we have it, else the observer token. */
  function accessToken() {
    return app.session.token || app.session.observerToken;
  }

  function isFull() {
    return Boolean(app.session && app.session.token);
  }

  function sessionUrl(suffix = "") {
    return `/v1/session/${encodeURIComponent(accessToken())}${suffix}`;
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  function describeError(body, response) {
    if (body && typeof body.error === "string") return body.error;
    return `the server answered ${response.status}`;
  }

  function hueOf(name) {
    const key = name.toLowerCase();
    if (!app.botHues.has(key)) app.botHues.set(key, BOT_HUES[app.botHues.size % BOT_HUES.length]);
    return app.botHues.get(key);
  }

  function formatSeconds(total) {
    const seconds = Math.max(0, Math.floor(total));
    const minutes = Math.floor(seconds / 60);
    return `${minutes}:${String(seconds % 60).padStart(2, "0")}`;
  }

  function setNotice(text, kind = "info") {
    ui.notice.textContent = text;
    ui.notice.dataset.kind = kind;
    show(ui.notice, Boolean(text));
  }

  function setConnection(text, state) {
    ui.connection.textContent = text;
    ui.connection.dataset.state = state;
  }

  // --- the default backend ---------------------------------------------------------------------

  async function refreshBackend() {
    clearTimeout(app.backendTimer);
    let next = app.config.poll_seconds * 1000;
    try {
      const response = await fetch("/healthz");
      const body = await readJson(response);
      if (response.ok && body && body.backend) {
        renderBackend(body.backend);
        if (BACKEND_BUSY.has(body.backend.state)) next = BACKEND_BUSY_POLL_MS;
      }
    } catch {
      // The connection indicator already says when the server is away.
    }
    app.backendTimer = setTimeout(refreshBackend, next);
  }

  function backendStateText(backend) {
    const build = backend.build;
    switch (backend.state) {
      case "ready":
        return "answers";
      case "building":
        return build ? `building, step ${build.number} of ${build.steps} (${formatSeconds(build.elapsed_seconds)})` : "building";
      case "starting":
        return "starting…";
      case "restarting":
        return "restarting…";
      case "unreachable":
        return "does not answer";
      case "failed":
        return "not available";
      case "stopped":
        return "stopped";
      default:
        return "checking…";
    }
  }

  function renderBackend(backend) {
    const kind = BACKEND_KINDS[backend.kind] || "LLM backend";
    const parts = [kind];
    if (backend.model) parts.push(backend.model);
    parts.push(backendStateText(backend));
    ui.backendText.textContent = parts.join(" · ");
    ui.backend.dataset.state = backend.state;
    ui.backend.title = backend.base_url || "";
    const build = backend.build;
    const measured = Boolean(build) && typeof build.fraction === "number";
    show(ui.backendProgress, measured);
    if (measured) ui.backendProgress.value = build.fraction;
    let detail = "";
    if (backend.state === "building" && build) {
      detail =
        `First start: building llama.cpp's llama-server from source (${build.step}). ` +
        "This happens once and takes a few minutes; sessions can start as soon as it is ready.";
    } else if (backend.state === "failed" || backend.state === "unreachable") {
      detail = backend.detail || "";
    }
    ui.backendDetail.textContent = detail;
    ui.backendDetail.dataset.kind = backend.state === "building" ? "info" : "error";
    show(ui.backendDetail, Boolean(detail));
  }

  // --- storage and the share link -----------------------------------------------------------

  function saveSession() {
    if (!app.session) {
      sessionStorage.removeItem(STORAGE_KEY);
      return;
    }
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(app.session));
  }

  function loadSavedSession() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
      if (saved && (saved.token || saved.observerToken)) return saved;
    } catch {
      sessionStorage.removeItem(STORAGE_KEY);
    }
    return null;
  }

  function observeTokenFromHash() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash) return null;
    const value = new URLSearchParams(hash).get(OBSERVE_PARAM);
    return value ? value.trim() : null;
  }

  function shareLinkFor(observerToken) {
    const url = new URL("/", location.href);
    url.hash = `${OBSERVE_PARAM}=${encodeURIComponent(observerToken)}`;
    return url.href;
  }

  // --- spec editor and creation ---------------------------------------------------------------

  async function loadLibrary() {
    try {
      const response = await fetch("/console/specs");
      if (!response.ok) return;
      const body = await response.json();
      for (const entry of body.specs || []) {
        const option = el("option", "", entry.title ? `${entry.name} — ${entry.title}` : entry.name);
        option.value = entry.name;
        if (entry.description) option.title = entry.description;
        ui.library.append(option);
      }
    } catch {
      // The editor still works without the library.
    }
  }

  async function pickLibrarySpec() {
    const name = ui.library.value;
    if (!name) return;
    clearProblems();
    try {
      const response = await fetch(`/console/specs/${encodeURIComponent(name)}`);
      if (!response.ok) {
        const body = await readJson(response);
        showProblems(describeError(body, response), []);
        return;
      }
      ui.editor.value = await response.text();
    } catch (error) {
      showProblems(`Could not load the spec: ${error.message}`, []);
    }
  }

  function specContentType(text) {
    return /^\s*[{[]/.test(text) ? "application/json" : "application/yaml";
  }

  function clearProblems() {
    ui.problemList.replaceChildren();
    ui.problemsTitle.textContent = "";
    show(ui.problems, false);
  }

  function showProblems(title, details) {
    ui.problemsTitle.textContent = title;
    ui.problemList.replaceChildren();
    for (const detail of details) {
      const item = el("li");
      const where = [];
      if (detail.path) where.push(detail.path);
      if (detail.line) where.push(detail.column ? `line ${detail.line}:${detail.column}` : `line ${detail.line}`);
      const text = where.length ? `${where.join(", ")}: ${detail.message}` : detail.message;
      if (detail.line) {
        const button = el("button", "problem link", text);
        button.type = "button";
        button.addEventListener("click", () => goToLine(detail.line, detail.column));
        item.append(button);
      } else {
        item.append(el("span", "problem", text));
      }
      ui.problemList.append(item);
    }
    show(ui.problems, true);
  }

  function goToLine(line, column) {
    const lines = ui.editor.value.split("\n");
    const index = Math.min(Math.max(line, 1), lines.length) - 1;
    let start = 0;
    for (let i = 0; i < index; i += 1) start += lines[i].length + 1;
    const end = start + lines[index].length;
    ui.editor.focus();
    ui.editor.setSelectionRange(column ? Math.min(start + column - 1, end) : start, end);
    const lineHeight = ui.editor.scrollHeight / Math.max(lines.length, 1);
    ui.editor.scrollTop = Math.max(0, lineHeight * index - ui.editor.clientHeight / 2);
  }

  async function createSession() {
    const text = ui.editor.value;
    clearProblems();
    if (!text.trim()) {
      showProblems("Write a spec or pick one from the library first.", []);
      ui.editor.focus();
      return;
    }
    ui.create.disabled = true;
    try {
      const response = await fetch("/v1/session/create", {
        method: "POST",
        headers: { "Content-Type": specContentType(text) },
        body: text,
      });
      const body = await readJson(response);
      if (response.status !== 201 || !body) {
        const details = body && Array.isArray(body.details) ? body.details : [];
        showProblems(describeError(body, response), details);
        return;
      }
      openSession({ id: body.id, token: body.token, observerToken: body.observer_token, talkerName: null });
      if (body.warnings && body.warnings.length) renderWarnings(body.warnings);
    } catch (error) {
      showProblems(`Could not reach the server: ${error.message}`, []);
    } finally {
      ui.create.disabled = false;
    }
  }

  function openByToken() {
    const token = ui.openToken.value.trim();
    if (!token) {
      ui.openToken.focus();
      return;
    }
    ui.openToken.value = "";
    if (token.startsWith(app.config.observer_token_prefix)) {
      openSession({ id: null, token: null, observerToken: token, talkerName: null });
    } else {
      openSession({ id: null, token, observerToken: null, talkerName: null });
    }
  }

  // --- the session ------------------------------------------------------------------------------

  function resetView() {
    disconnect();
    clearInterval(app.pollTimer);
    clearTimeout(app.statusTimer);
    app.pollTimer = null;
    app.status = null;
    app.lifecycle = null;
    app.ended = false;
    app.streamComplete = false;
    app.lastSeq = null;
    app.role = null;
    app.followTranscript = true;
    app.messages.clear();
    app.pending.clear();
    app.botHues.clear();
    ui.transcript.replaceChildren();
    renderWarnings([]);
    setNotice("");
    app.backendNotice = false;
    setLoopState(null);
    ui.sessionName.textContent = "";
    show(ui.emptyNote, true);
  }

  function openSession(session) {
    resetView();
    app.session = session;
    saveSession();
    show(ui.setup, false);
    show(ui.session, true);
    document.body.classList.add("has-session");
    ui.ownerToken.value = session.token || "";
    ui.ownerToken.type = "password";
    ui.showToken.textContent = "Show";
    ui.showToken.setAttribute("aria-pressed", "false");
    show(ui.ownerTokenBox, Boolean(session.token));
    document.body.classList.toggle("can-fork", Boolean(session.token));
    show(ui.shareBox, Boolean(session.observerToken));
    ui.shareLink.value = session.observerToken ? shareLinkFor(session.observerToken) : "";
    if (session.talkerName) ui.talkerName.value = session.talkerName;
    app.seatRetries = session.talkerName ? TALKER_SEAT_RETRIES : 0;
    renderControls();
    connect(session.talkerName ? "talker" : "observer");
    refreshStatus();
    app.pollTimer = setInterval(refreshStatus, app.config.poll_seconds * 1000);
  }

  function leaveSession() {
    resetView();
    app.session = null;
    saveSession();
    if (observeTokenFromHash()) history.replaceState(null, "", location.pathname + location.search);
    show(ui.session, false);
    show(ui.setup, true);
    document.body.classList.remove("has-session", "can-fork");
    show(ui.composer, false);
    ui.composerNote.textContent = "";
    setConnection("Not connected", "offline");
    ui.editor.focus();
  }

  async function refreshStatus() {
    if (!app.session || app.statusInFlight) return;
    app.statusInFlight = true;
    try {
      const response = await fetch(sessionUrl());
      const body = await readJson(response);
      if (!response.ok) {
        if (response.status === 404) {
          setNotice("This session does not exist (any more).", "error");
          app.streamComplete = true;
          disconnect();
          markEnded();
        }
        return;
      }
      renderStatus(body);
    } catch {
      // Offline for a moment: the next poll or event tries again.
    } finally {
      app.statusInFlight = false;
    }
  }

  /** Coalesce the status refreshes that a burst of events asks for. */
  function refreshStatusSoon() {
    if (app.statusTimer) return;
    app.statusTimer = setTimeout(() => {
      app.statusTimer = null;
      refreshStatus();
    }, STATUS_COALESCE_MS);
  }

  function renderStatus(status) {
    app.status = status;
    if (status.backend_outage && !app.backendNotice) {
      // The one backend_unreachable event came before this page connected.
      app.backendNotice = true;
      setNotice(`Waiting for the LLM backend: ${status.backend_outage}`, "error");
    }
    if (!app.session.id && status.id) {
      app.session.id = status.id;
      saveSession();
    }
    const s = ui.status;
    ui.sessionTitle.textContent = status.name ? `Session: ${status.name}` : "Session";
    ui.sessionName.textContent = status.name ? `— ${status.name}` : "";
    setLifecycle(status.state);
    if (status.state === "ended" || !app.loopState) setLoopState(status.loop_state);
    s.mode.textContent = `${status.participation}, ${status.turn_order.replace("_", " ")}`;
    const maxTurns = status.limits.max_turns;
    s.turns.textContent = maxTurns == null ? `${status.bot_turns}` : `${status.bot_turns} / ${maxTurns}`;
    s.messages.textContent = String(status.messages);
    const started = Date.parse(status.created_at);
    const stopped = status.ended_at ? Date.parse(status.ended_at) : Date.now();
    const elapsed = formatSeconds((stopped - started) / 1000);
    const maxTime = status.limits.max_time;
    s.time.textContent = maxTime == null ? elapsed : `${elapsed} / ${formatSeconds(maxTime)}`;
    const tokens = status.tokens;
    s.tokens.textContent = `${tokens.context} / ${tokens.limit}`;
    s.tokensBar.max = Math.max(tokens.limit, 1);
    s.tokensBar.value = Math.min(tokens.context, tokens.limit);
    renderMembers(status.members);
    renderBackends(status);
    renderWarnings(status.warnings);
    if (status.state === "ended") {
      const reason = status.end_reason ? ` (${status.end_reason.replace(/_/g, " ")})` : "";
      if (!app.ended && (ui.notice.hidden || ui.notice.dataset.kind === "error")) {
        setNotice(`The session has ended${reason}.`);
      }
      markEnded();
    }
    renderControls();
  }

  /**
   * Who is connected: `{talkers: [names], observers: N}`, from the status, a `presence`
   * event or a `history` event (observers are counted, never announced one by one).
   */
  function renderMembers(members) {
    if (!members) return;
    const parts = [];
    if (members.talkers.length) parts.push(`talkers: ${members.talkers.join(", ")}`);
    parts.push(`${members.observers} observer${members.observers === 1 ? "" : "s"}`);
    ui.status.members.textContent = parts.join("; ");
  }

  /** Which named backend each bot uses: shown only when a session uses other than the default. */
  function renderBackends(status) {
    const b = status.backends;
    if (!b) return;
    const parts = Object.entries(b.bots).map(([bot, name]) => `${bot}: ${name}`);
    if (status.turn_order === "orchestrated") parts.push(`orchestrator: ${b.orchestrator}`);
    if (b.summarizer !== b.session) parts.push(`summaries: ${b.summarizer}`);
    const used = new Set([b.session, b.orchestrator, b.summarizer, ...Object.values(b.bots)]);
    ui.status.backends.textContent = parts.join("; ");
    show(ui.status.backendsRow, used.size > 1 || b.session !== "default");
  }

  function renderWarnings(warnings) {
    ui.warnings.replaceChildren(...warnings.map((text) => el("li", "", text)));
    show(ui.warnings, warnings.length > 0);
  }

  function setLifecycle(state) {
    app.lifecycle = state;
    ui.status.state.textContent = state || "—";
    ui.status.state.dataset.state = state || "";
  }

  function markEnded() {
    if (app.ended) return;
    app.ended = true;
    setLifecycle("ended");
    clearInterval(app.pollTimer);
    app.pollTimer = null;
    for (const node of app.pending.values()) node.remove();
    app.pending.clear();
    renderActivity();
    if (app.streamComplete) {
      setConnection("Session ended", "ended");
    } else if (!app.socket && !app.reconnectTimer) {
      // Ended while we were away: connect once more to collect what we missed.
      connect("observer");
    }
    renderControls();
  }

  function renderControls() {
    const full = isFull();
    const talkersAllowed = app.status ? app.status.participation !== "autonomous" : false;
    show(ui.ownerControls, full);
    ui.pause.disabled = !full || app.ended || app.lifecycle !== "active";
    ui.resume.disabled = !full || app.ended || app.lifecycle !== "paused";
    ui.end.disabled = !full || app.ended;
    show(ui.joinForm, full && talkersAllowed && !app.ended && app.role !== "talker");
    ui.talkerName.maxLength = app.config.max_name_chars;
    const talking = app.role === "talker" && !app.ended;
    show(ui.composer, talking);
    ui.send.disabled = !(talking && app.connected);
    ui.message.maxLength = app.config.max_message_chars;
    if (app.ended && app.role === "talker") ui.composerNote.textContent = "The session has ended.";
  }

  async function control(action) {
    const requests = {
      pause: [sessionUrl("/pause"), "POST"],
      resume: [sessionUrl("/resume"), "POST"],
      end: [sessionUrl(), "DELETE"],
    };
    const [url, method] = requests[action];
    try {
      const response = await fetch(url, { method });
      const body = await readJson(response);
      if (!response.ok) {
        setNotice(describeError(body, response), "error");
        return;
      }
      if (ui.notice.dataset.kind === "error") setNotice("");
      renderStatus(body);
    } catch (error) {
      setNotice(`Could not reach the server: ${error.message}`, "error");
    }
  }

  function endSession() {
    // A native dialog: keyboard-usable, and ending cannot be undone.
    if (window.confirm("End this session for everyone? This cannot be undone.")) control("end");
  }

  // --- the WebSocket ---------------------------------------------------------------------------

  function connect(role) {
    disconnect();
    if (!app.session || app.streamComplete) return;
    if (app.ended) role = "observer";
    const params = new URLSearchParams({ role });
    const name = role === "talker" ? app.session.talkerName : null;
    if (name) params.set("name", name);
    if (app.lastSeq !== null) params.set("since", String(app.lastSeq));
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/session/${encodeURIComponent(role === "talker" ? app.session.token : accessToken())}/connect?${params}`;
    const socket = new WebSocket(url);
    app.socket = socket;
    app.role = role;
    app.connected = false;
    app.socketOpened = false;
    app.socketStreamed = false;
    setConnection("Connecting…", "connecting");
    socket.addEventListener("open", () => {
      if (app.socket !== socket) return;
      app.socketOpened = true;
      onConnected();
    });
    socket.addEventListener("message", (message) => {
      if (app.socket !== socket) return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      onEvent(event);
    });
    socket.addEventListener("close", (close) => {
      if (app.socket !== socket) return;
      app.socket = null;
      app.connected = false;
      onClose(close.code, role);
    });
    renderControls();
  }

  function disconnect() {
    clearTimeout(app.reconnectTimer);
    app.reconnectTimer = null;
    const socket = app.socket;
    app.socket = null;
    app.connected = false;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(CLOSE_NORMAL);
  }

  function onConnected() {
    if (app.connected) return;
    app.connected = true;
    const who = app.role === "talker" ? `talker ${app.session.talkerName}` : "observer";
    setConnection(`Connected as ${who}`, "online");
    if (app.role === "talker") ui.composerNote.textContent = "";
    renderControls();
  }

  function onClose(code, role) {
    if (code === CLOSE_NORMAL || app.streamComplete) {
      // The server closes with 1000 only once the session has ended and every event
      // up to `session_end` was sent.
      app.streamComplete = true;
      setConnection("Session ended", "ended");
      markEnded();
      renderControls();
      return;
    }
    if (code === CLOSE_NOT_FOUND) {
      app.streamComplete = true;
      setConnection("Not connected", "offline");
      setNotice("This session does not exist (any more).", "error");
      markEnded();
      return;
    }
    if (role === "talker") {
      // Refusals come as an error event and a 4xxx code; a browser may also see a bare
      // 1006 when the server drops the refused socket quickly. An accepted talker always
      // gets at least its own `member_joined`, so a socket that opened and delivered
      // nothing was refused too.
      const refused = app.socketOpened && !app.socketStreamed;
      const noSeat = code === CLOSE_NO_SEAT || (refused && code !== CLOSE_FORBIDDEN && code !== CLOSE_BAD_REQUEST);
      if (noSeat && app.seatRetries > 0) {
        app.seatRetries -= 1;
        scheduleReconnect(app.reconnectDelay);
        return;
      }
      if (noSeat || refused || code === CLOSE_FORBIDDEN || code === CLOSE_BAD_REQUEST) {
        // Keep watching as an observer; the note under the conversation says why.
        if (!ui.composerNote.textContent) {
          ui.composerNote.textContent = "The server did not accept you as a talker.";
        }
        app.session.talkerName = null;
        saveSession();
        connect("observer");
        return;
      }
    }
    if (code === CLOSE_FORBIDDEN || code === CLOSE_BAD_REQUEST) {
      setConnection("Not connected", "offline");
      renderControls();
      return;
    }
    scheduleReconnect(code === CLOSE_TOO_SLOW ? 0 : app.reconnectDelay);
  }

  function scheduleReconnect(delay) {
    clearTimeout(app.reconnectTimer);
    const role = app.session && app.session.talkerName ? "talker" : "observer";
    setConnection(delay ? `Connection lost — reconnecting in ${Math.ceil(delay / 1000)} s…` : "Reconnecting…", "connecting");
    app.reconnectDelay = Math.min(app.reconnectDelay * 2, RECONNECT_MAX_MS);
    app.reconnectTimer = setTimeout(() => {
      app.reconnectTimer = null;
      connect(role);
    }, delay);
    renderControls();
  }

  function reconnectNow() {
    if (app.session && !app.streamComplete && !app.socket) {
      app.reconnectDelay = RECONNECT_FIRST_MS;
      connect(app.session.talkerName ? "talker" : "observer");
    }
  }

  function sendMessage() {
    const content = ui.message.value.trim();
    if (!content) return;
    if (!app.socket || !app.connected || app.role !== "talker") {
      ui.composerNote.textContent = "Not connected — your message is kept; send it again once reconnected.";
      return;
    }
    app.socket.send(JSON.stringify({ type: "user_message", content }));
    ui.message.value = "";
    ui.composerNote.textContent = "";
  }

  function joinAsTalker() {
    app.seatRetries = 0;
    ui.composerNote.textContent = "";
    const name = ui.talkerName.value.trim();
    if (!name) {
      ui.talkerName.setCustomValidity("Enter a display name.");
      ui.talkerName.reportValidity();
      return;
    }
    ui.talkerName.setCustomValidity("");
    app.session.talkerName = name;
    saveSession();
    connect("talker");
    ui.message.focus();
  }

  // --- events --------------------------------------------------------------------------------

  function onEvent(event) {
    if (!event || typeof event.type !== "string") return;
    if (event.type === "history") {
      streaming();
      applyHistory(event);
      return;
    }
    if (event.type === "pong") return;
    const seq = typeof event.seq === "number" ? event.seq : null;
    if (app.lastSeq === null || seq === null || seq <= app.lastSeq) {
      // Not part of the session's stream: a refusal before any history, a reply to this
      // client only (it repeats the last seq), or an event already shown.
      if (event.type === "error") showClientError(event);
      return;
    }
    streaming();
    app.lastSeq = seq;
    switch (event.type) {
      case "turn_start":
        startTurn(event.bot, event.turn);
        break;
      case "token":
        appendToken(event.bot, event.turn, event.token);
        break;
      case "bot_message":
        finishTurn(event.bot, event.turn, event.content);
        if (app.backendNotice) {
          // The backend answers again.
          app.backendNotice = false;
          setNotice("");
        }
        refreshStatusSoon();
        break;
      case "turn_end":
        if (event.status === "failed") failTurn(event.bot, event.turn);
        refreshStatusSoon();
        break;
      case "talker_message":
        upsertMessage({ turn: event.turn, kind: "talker", speaker: event.talker, content: event.content, status: "complete" });
        refreshStatusSoon();
        break;
      case "state":
        setLoopState(event.state);
        break;
      case "session_paused":
        setLifecycle("paused");
        setNotice(event.reason === "server_restart" ? "Paused by a server restart." : "Paused.");
        renderControls();
        refreshStatusSoon();
        break;
      case "session_resumed":
        setLifecycle("active");
        setNotice("");
        renderControls();
        refreshStatusSoon();
        break;
      case "session_end": {
        const detail = event.detail ? ` — ${event.detail}` : "";
        setNotice(`The session has ended (${String(event.reason).replace(/_/g, " ")})${detail}.`);
        app.streamComplete = true;
        markEnded();
        setLoopState("ended");
        refreshStatus();
        break;
      }
      case "error":
        if (event.code === BACKEND_UNREACHABLE) {
          app.backendNotice = true;
          setNotice(`Waiting for the LLM backend: ${event.message}`, "error");
          if (event.turn != null) noteTurnError(event.turn, event.message);
        } else if (event.turn != null) noteTurnError(event.turn, event.message);
        else setNotice(`Error: ${event.message}`, "error");
        // A backend problem found while running is also kept among the warnings.
        if (event.code === "backend_template_mismatch") refreshStatusSoon();
        break;
      case "presence":
        renderMembers(event);
        break;
      default:
        // debug and any event type added later: not shown.
        break;
    }
  }

  /** The current socket delivers the session's stream: it was not refused. */
  function streaming() {
    if (app.socketStreamed) return;
    app.socketStreamed = true;
    // Only a working stream resets the back-off, not a socket that opens and is refused.
    app.reconnectDelay = RECONNECT_FIRST_MS;
    if (app.role === "talker") app.seatRetries = TALKER_SEAT_RETRIES;
  }

  function showClientError(event) {
    const text = `${event.message}`;
    if (app.role === "talker") ui.composerNote.textContent = text;
    else setNotice(text, "error");
  }

  function applyHistory(event) {
    // A fresh snapshot: in-flight replies without a position are announced again by
    // their next token or message.
    for (const node of app.pending.values()) node.remove();
    app.pending.clear();
    for (const message of event.messages || []) upsertMessage(message);
    app.lastSeq = event.seq;
    if (event.state) setLoopState(event.state);
    renderMembers(event.presence);
    if (event.state === "ended") {
      app.streamComplete = true;
      markEnded();
    }
    scrollToEnd(true);
  }

  // --- the transcript --------------------------------------------------------------------------

  function isNearBottom() {
    const box = ui.transcript;
    return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollToEnd(force) {
    if (force || app.followTranscript) ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function bubble(kind, speaker) {
    const item = el("li", `msg ${kind}`);
    const head = el("div", "msg-head");
    const name = el("span", "speaker", speaker);
    const label = el("span", "msg-meta");
    const fork = el("button", "fork-here link", "Fork from here");
    fork.type = "button";
    fork.hidden = true;
    head.append(name, label, fork);
    const body = el("p", "msg-body");
    item.append(head, body);
    if (kind === "bot") item.style.setProperty("--hue", String(hueOf(speaker)));
    return item;
  }

  function placeNumbered(item, turn) {
    // Positions only grow, so the right place is almost always the end.
    const children = ui.transcript.children;
    let before = null;
    for (let i = children.length - 1; i >= 0; i -= 1) {
      const child = children[i];
      const childTurn = child.dataset.turn ? Number(child.dataset.turn) : Infinity;
      if (childTurn < turn) break;
      before = child;
    }
    ui.transcript.insertBefore(item, before);
  }

  function renderBody(item) {
    const body = item.querySelector(".msg-body");
    const meta = item.querySelector(".msg-meta");
    const status = item.dataset.status;
    const turnLabel = item.dataset.turn ? `#${item.dataset.turn}` : "";
    item.classList.toggle("thinking", status === "reserved" && !item.streamText);
    item.classList.toggle("streaming", status === "reserved" && Boolean(item.streamText));
    item.classList.toggle("failed", status === "failed");
    item.setAttribute("aria-busy", status === "reserved" ? "true" : "false");
    const fork = item.querySelector(".fork-here");
    if (fork) {
      // A reply still being written cannot be forked at (nor can a bubble with no position).
      fork.hidden = !item.dataset.turn || status === "reserved";
      fork.setAttribute("aria-label", `Fork from message ${item.dataset.turn || ""}`.trim());
    }
    if (status === "failed") {
      meta.textContent = `${turnLabel} · failed turn`.replace(/^ · /, "");
      body.textContent = item.failReason ? `No reply: ${item.failReason}` : "No reply (the turn failed).";
    } else if (status === "reserved") {
      meta.textContent = turnLabel;
      if (item.streamText) {
        body.textContent = item.streamText;
      } else {
        body.replaceChildren(el("span", "dots", "thinking…"));
      }
    } else {
      meta.textContent = item.classList.contains("talker") ? `${turnLabel} · talker`.replace(/^ · /, "") : turnLabel;
      body.textContent = item.content;
    }
  }

  const STATUS_RANK = { reserved: 0, complete: 1, failed: 1 };

  /** Show `message` at its position; a later or equal snapshot never goes backwards. */
  function upsertMessage(message) {
    const follow = isNearBottom();
    let item = app.messages.get(message.turn);
    const status = message.status || "complete";
    if (item && STATUS_RANK[status] < STATUS_RANK[item.dataset.status]) return item;
    if (!item || item.dataset.kind !== message.kind) {
      const fresh = bubble(message.kind, message.speaker);
      fresh.dataset.turn = String(message.turn);
      fresh.dataset.kind = message.kind;
      fresh.id = `msg-${message.turn}`;
      if (item) {
        item.replaceWith(fresh);
        fresh.streamText = item.streamText;
      } else {
        placeNumbered(fresh, message.turn);
      }
      item = fresh;
      app.messages.set(message.turn, item);
    }
    item.dataset.status = status;
    item.dataset.speaker = message.speaker;
    item.content = message.content || "";
    if (status !== "reserved") item.streamText = "";
    renderBody(item);
    show(ui.emptyNote, false);
    renderActivity();
    app.followTranscript = follow;
    scrollToEnd(false);
    return item;
  }

  function pendingBubble(bot) {
    let item = app.pending.get(bot);
    if (!item) {
      item = bubble("bot", bot);
      item.dataset.status = "reserved";
      item.dataset.speaker = bot;
      item.classList.add("pending");
      ui.transcript.append(item);
      app.pending.set(bot, item);
      show(ui.emptyNote, false);
      renderActivity();
    }
    return item;
  }

  function startTurn(bot, turn) {
    const follow = isNearBottom();
    if (turn == null) {
      renderBody(pendingBubble(bot));
    } else {
      upsertMessage({ turn, kind: "bot", speaker: bot, content: "", status: "reserved" });
    }
    app.followTranscript = follow;
    scrollToEnd(false);
  }

  function appendToken(bot, turn, token) {
    const follow = isNearBottom();
    let item = turn == null ? pendingBubble(bot) : app.messages.get(turn);
    if (!item) item = upsertMessage({ turn, kind: "bot", speaker: bot, content: "", status: "reserved" });
    if (item.dataset.status !== "reserved") return;
    item.streamText = (item.streamText || "") + token;
    renderBody(item);
    app.followTranscript = follow;
    scrollToEnd(false);
  }

  function finishTurn(bot, turn, content) {
    const pending = app.pending.get(bot);
    if (pending) {
      pending.remove();
      app.pending.delete(bot);
    }
    upsertMessage({ turn, kind: "bot", speaker: bot, content, status: "complete" });
    renderActivity();
  }

  function failTurn(bot, turn) {
    const pending = app.pending.get(bot);
    if (pending) {
      pending.remove();
      app.pending.delete(bot);
    }
    const existing = app.messages.get(turn);
    const reason = existing ? existing.failReason : undefined;
    const item = upsertMessage({ turn, kind: "bot", speaker: bot, content: "", status: "failed" });
    if (reason) item.failReason = reason;
    renderBody(item);
  }

  function noteTurnError(turn, message) {
    const item = app.messages.get(turn);
    if (item) {
      item.failReason = message;
      if (item.dataset.status === "failed") renderBody(item);
    }
  }

  // --- forks and transcripts --------------------------------------------------------------------

  function forkKeyFromHash() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash) return null;
    const value = new URLSearchParams(hash).get(FORK_PARAM);
    return value && /^[0-9a-f]+$/.test(value) ? value : null;
  }

  function randomKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(HANDOFF_KEY_BYTES));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** Leave `session` for the tab that opens `/#fork=<key>`; return that key. */
  function leaveHandoff(session) {
    const key = randomKey();
    localStorage.setItem(HANDOFF_PREFIX + key, JSON.stringify({ at: Date.now(), session }));
    return key;
  }

  function takeHandoff(key) {
    const name = HANDOFF_PREFIX + key;
    try {
      const text = localStorage.getItem(name);
      localStorage.removeItem(name);
      const entry = JSON.parse(text || "null");
      return entry && entry.session && entry.session.token ? entry.session : null;
    } catch {
      return null;
    }
  }

  function sweepHandoffs() {
    try {
      for (const name of Object.keys(localStorage)) {
        if (!name.startsWith(HANDOFF_PREFIX)) continue;
        let at = 0;
        try {
          at = JSON.parse(localStorage.getItem(name) || "{}").at || 0;
        } catch {
          // Unreadable: it goes too.
        }
        if (Date.now() - at > HANDOFF_MAX_AGE_MS) localStorage.removeItem(name);
      }
    } catch {
      // No localStorage here: nothing was left in it either.
    }
  }

  function showForkProblems(title, details) {
    ui.forkProblemsTitle.textContent = title;
    ui.forkProblemList.replaceChildren(
      ...details.map((d) => el("li", "problem", d.path ? `${d.path}: ${d.message}` : d.message)),
    );
    show(ui.forkProblems, Boolean(title));
  }

  function openForkDialog(turn) {
    if (!isFull()) return;
    app.forkTurn = turn;
    ui.forkTurn.textContent = `#${turn}`;
    showForkProblems("", []);
    show(ui.forkOpened, false);
    ui.forkCreate.disabled = false;
    ui.forkDialog.showModal();
    ui.forkOverrides.focus();
  }

  async function createFork() {
    if (!isFull() || app.forkTurn === null) return;
    showForkProblems("", []);
    let overrides = {};
    const text = ui.forkOverrides.value.trim();
    if (text) {
      try {
        overrides = JSON.parse(text);
      } catch (error) {
        showForkProblems(`The spec changes are not valid JSON: ${error.message}`, []);
        return;
      }
    }
    ui.forkCreate.disabled = true;
    try {
      const response = await fetch(sessionUrl("/fork"), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ at_turn: app.forkTurn, overrides, start: ui.forkStart.value }),
      });
      const body = await readJson(response);
      if (response.status !== 201 || !body) {
        const details = body && Array.isArray(body.details) ? body.details : [];
        showForkProblems(describeError(body, response), details);
        ui.forkCreate.disabled = false;
        return;
      }
      const forked = { id: body.id, token: body.token, observerToken: body.observer_token, talkerName: null };
      const url = new URL("/", location.href);
      url.hash = `${FORK_PARAM}=${leaveHandoff(forked)}`;
      const opened = window.open(url.href, "_blank");
      if (opened) {
        ui.forkDialog.close();
        setNotice(`The fork of message #${app.forkTurn} opened in a new tab.`);
      } else {
        // A blocked pop-up: the link is then a click of the user's own.
        ui.forkLink.href = url.href;
        show(ui.forkOpened, true);
      }
    } catch (error) {
      showForkProblems(`Could not reach the server: ${error.message}`, []);
      ui.forkCreate.disabled = false;
    }
  }

  function filenameOf(disposition, fallback) {
    const match = /filename="([^"]+)"/.exec(disposition || "");
    return match ? match[1] : fallback;
  }

  async function downloadTranscript() {
    if (!app.session) return;
    const format = ui.exportFormat.value;
    // Read-only access is enough: the observer token when this tab has it.
    const token = app.session.observerToken || app.session.token;
    const params = new URLSearchParams({ format });
    ui.download.disabled = true;
    try {
      const response = await fetch(`/v1/session/${encodeURIComponent(token)}/transcript?${params}`);
      if (!response.ok) {
        setNotice(describeError(await readJson(response), response), "error");
        return;
      }
      const blob = await response.blob();
      const name = filenameOf(response.headers.get("Content-Disposition"), `transcript.${format}`);
      const url = URL.createObjectURL(blob);
      const link = el("a");
      link.href = url;
      link.download = name;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), DOWNLOAD_URL_LIFETIME_MS);
    } catch (error) {
      setNotice(`Could not reach the server: ${error.message}`, "error");
    } finally {
      ui.download.disabled = false;
    }
  }

  // --- the state diagram -------------------------------------------------------------------------

  async function loadDiagram() {
    try {
      const response = await fetch("/console/diagram/loop.svg");
      if (!response.ok) {
        ui.diagram.replaceChildren(el("p", "hint", "The diagram is not available on this server."));
        return;
      }
      const text = await response.text();
      const parsed = new DOMParser().parseFromString(text, "image/svg+xml");
      const svg = parsed.documentElement;
      if (!svg || svg.nodeName !== "svg" || parsed.querySelector("parsererror")) return;
      // Our own file, but keep it inert all the same.
      for (const script of svg.querySelectorAll("script, foreignObject")) script.remove();
      for (const node of svg.querySelectorAll("*")) {
        for (const attr of [...node.attributes]) {
          if (attr.name.toLowerCase().startsWith("on")) node.removeAttribute(attr.name);
        }
      }
      svg.removeAttribute("width");
      svg.removeAttribute("height");
      svg.setAttribute("focusable", "false");
      svg.setAttribute("aria-hidden", "true");
      const adopted = document.importNode(svg, true);
      ui.diagram.replaceChildren(adopted);
      app.diagramNodes.clear();
      for (const node of adopted.querySelectorAll("g.node")) {
        const title = node.querySelector("title");
        if (title) app.diagramNodes.set(title.textContent.trim(), node);
      }
      setLoopState(app.loopState);
    } catch {
      ui.diagram.replaceChildren(el("p", "hint", "The diagram could not be loaded."));
    }
  }

  function setLoopState(state) {
    app.loopState = state || null;
    const label = state ? state.replace(/_/g, " ") : "—";
    ui.status.loop.textContent = label;
    ui.diagramState.textContent = label;
    ui.diagram.setAttribute("aria-label", `Loop state machine; current state: ${label}`);
    for (const [name, node] of app.diagramNodes) node.classList.toggle("current", name === state);
    renderActivity();
  }

  /** A reply in flight without a bubble (e.g. joined mid-turn without rectification). */
  function renderActivity() {
    const text = app.ended ? undefined : ACTIVITY[app.loopState];
    const shown = Boolean(text) && !ui.transcript.querySelector("li.thinking, li.streaming");
    ui.activityText.textContent = text || "";
    show(ui.activity, shown);
  }

  // --- start ---------------------------------------------------------------------------------------

  function startFromLocation() {
    const handoff = forkKeyFromHash();
    if (handoff !== null) {
      history.replaceState(null, "", location.pathname + location.search);
      const forked = takeHandoff(handoff);
      if (forked) {
        openSession(forked);
        return true;
      }
      showProblems("This fork link was already used, or has expired. Open the fork with its token.", []);
    }
    const observerToken = observeTokenFromHash();
    if (observerToken) {
      const saved = loadSavedSession();
      if (saved && saved.observerToken === observerToken) {
        openSession(saved);
      } else {
        openSession({ id: null, token: null, observerToken, talkerName: null });
      }
      return true;
    }
    const saved = loadSavedSession();
    if (saved) {
      openSession(saved);
      return true;
    }
    return false;
  }

  async function loadConfig() {
    try {
      const response = await fetch("/console/config");
      if (response.ok) app.config = { ...DEFAULT_CONFIG, ...(await response.json()) };
    } catch {
      // Defaults are fine.
    }
  }

  async function copyText(text, button) {
    const original = button.textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => {
      button.textContent = original;
    }, COPIED_LABEL_MS);
  }

  function wire() {
    ui.library.addEventListener("change", pickLibrarySpec);
    ui.create.addEventListener("click", createSession);
    ui.open.addEventListener("click", openByToken);
    ui.openToken.addEventListener("keydown", (event) => {
      if (event.key === "Enter") openByToken();
    });
    ui.editor.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        createSession();
      }
    });
    ui.newSession.addEventListener("click", leaveSession);
    ui.pause.addEventListener("click", () => control("pause"));
    ui.resume.addEventListener("click", () => control("resume"));
    ui.end.addEventListener("click", endSession);
    ui.copyLink.addEventListener("click", () => copyText(ui.shareLink.value, ui.copyLink));
    ui.shareLink.addEventListener("focus", () => ui.shareLink.select());
    ui.copyToken.addEventListener("click", () => copyText(ui.ownerToken.value, ui.copyToken));
    ui.showToken.addEventListener("click", () => {
      const hidden = ui.ownerToken.type === "password";
      ui.ownerToken.type = hidden ? "text" : "password";
      ui.showToken.textContent = hidden ? "Hide" : "Show";
      ui.showToken.setAttribute("aria-pressed", String(hidden));
    });
    ui.joinForm.addEventListener("submit", (event) => {
      event.preventDefault();
      joinAsTalker();
    });
    ui.talkerName.addEventListener("input", () => ui.talkerName.setCustomValidity(""));
    ui.download.addEventListener("click", downloadTranscript);
    ui.transcript.addEventListener("click", (event) => {
      const button = event.target.closest(".fork-here");
      const item = button ? button.closest("li") : null;
      if (item && item.dataset.turn) openForkDialog(Number(item.dataset.turn));
    });
    ui.forkForm.addEventListener("submit", (event) => {
      event.preventDefault();
      createFork();
    });
    ui.forkCancel.addEventListener("click", () => ui.forkDialog.close());
    ui.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      sendMessage();
    });
    ui.message.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendMessage();
      }
    });
    ui.transcript.addEventListener("scroll", () => {
      app.followTranscript = isNearBottom();
    });
    window.addEventListener("online", reconnectNow);
    window.addEventListener("hashchange", () => {
      const token = observeTokenFromHash();
      if (forkKeyFromHash() !== null) {
        startFromLocation();
      } else if (token && (!app.session || app.session.observerToken !== token)) {
        startFromLocation();
      }
    });
  }

  async function main() {
    sweepHandoffs();
    wire();
    await loadConfig();
    refreshBackend();
    loadLibrary();
    loadDiagram();
    startFromLocation();
  }

  main();
})();
