// Hearth staff console: speaks the wire protocol (docs/protocol.md) over
// /ws with a staff token: `hello` with `auth`, `watch`, the staff frames,
// and the `escalation`, `flag` and `report` events. Plain modern
// JavaScript, no build step, no dependencies. The token lives in this
// module's memory only (never in any storage), and nothing here ever sees
// an address.

import { $, el, announce, timeOf, roleLabel, connectLink, retryLater, sendFrame, showNotice, hideNotice } from './common.js';

const LEVELS = { imminent: 3, high: 2, concern: 1, none: 0 };
const LEVEL_LABEL = { imminent: 'Imminent', high: 'High', concern: 'Concern', none: 'None' };
const STATE_ORDER = { open: 0, acknowledged: 1 };
const SLOW_CHOICES = [0, 10, 30, 60, 300];
// A console stays open for a whole shift: what it keeps is bounded.
const MAX_MESSAGES_PER_ROOM = 500;
const MAX_FLAGS = 2000;

const state = {
  token: null, // the staff token: memory only
  ws: null,
  conn: 'signed-out', // signed-out | connecting | online | reconnecting
  attempt: 0,
  reconnectTimer: null,
  nextRef: 1,
  pending: new Map(), // ref -> {kind, ...}
  me: null,
  rooms: [], // welcome.rooms
  panels: new Map(), // room id -> Panel (watched rooms and care rooms)
  escalations: new Map(), // id -> EscalationItem
  reports: new Map(), // id -> li
  flags: new Map(), // message id -> flag event
  alertFor: null, // escalation id the imminent alert is about
  audio: null,
  person: null, // the person-dialog target {room, peer}
};

// ------------------------------------------------------------- utilities

// Deadlines are the server's times; a laptop whose clock is off would show
// wrong countdowns. The server's `Date` header (whole seconds) gives the
// offset; it is used only when it is clearly more than rounding.
let clockSkew = 0;
async function measureSkew() {
  try {
    const t0 = Date.now();
    const res = await fetch('/healthz', { cache: 'no-store' });
    const t1 = Date.now();
    const server = Date.parse(res.headers.get('date') || '');
    if (Number.isNaN(server)) return;
    const skew = server + 500 - (t0 + t1) / 2;
    clockSkew = Math.abs(skew) > 1500 ? skew : 0;
  } catch {
    // Offline: keep the last offset.
  }
}

/** The server's time now, as well as the browser can tell. */
function serverNow() {
  return Date.now() + clockSkew;
}

function clock(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function roomTitle(id) {
  const r = state.rooms.find((x) => x.id === id);
  if (r) return r.title;
  return id && id.startsWith('care-') ? 'Care room' : id || '';
}

function levelText(level, categories) {
  const cats = (categories || []).map((c) => c.replace(/_/g, ' ')).join(', ');
  return `${LEVEL_LABEL[level] || level}${cats ? ` · ${cats}` : ''}`;
}

/** Keeps keyboard focus where it was while `fn` moves elements around. */
function keepingFocus(fn) {
  const active = document.activeElement;
  fn();
  if (active && active !== document.body && active.isConnected && document.activeElement !== active) active.focus();
}

// ------------------------------------------------------------ the socket

function send(frame, pending) {
  const ref = sendFrame(state, frame, pending);
  if (ref === null) showNotice('Not connected right now; try again in a moment.');
  return ref;
}

function setConn(s) {
  state.conn = s;
  document.documentElement.dataset.conn = s;
  $('conn').textContent = { 'signed-out': '', connecting: 'Connecting…', online: '', reconnecting: 'Reconnecting…' }[s];
}

function connect() {
  const made = connectLink(state, {
    hello: () => ({ type: 'hello', auth: state.token, locale: navigator.language || 'en' }),
    onFrame: handle,
    onClose,
  });
  if (!made) scheduleReconnect();
}

function onClose(ev) {
  if (!state.token) return; // signed out
  if (ev.code === 4003) {
    signOut(ev.reason === 'staff token expired'
      ? 'Your staff token has expired. Please sign in with a new one.'
      : 'This staff token was not accepted. Please sign in again.');
    return;
  }
  if (ev.code === 1000 && /resumed on another/.test(ev.reason)) {
    signOut('You signed in somewhere else, so this console was signed out.');
    return;
  }
  scheduleReconnect(ev.code === 1012);
}

function scheduleReconnect(restarting = false) {
  setConn(state.me ? 'reconnecting' : 'connecting');
  retryLater(state, connect, restarting);
}

// ---------------------------------------------------------------- sign-in

function signIn(ev) {
  ev.preventDefault();
  const token = $('token').value.trim();
  if (!token) {
    $('signin-error').textContent = 'Paste your staff token first.';
    $('token').focus();
    return;
  }
  $('token').value = '';
  $('signin-error').textContent = '';
  state.token = token;
  state.attempt = 0;
  // A user gesture: the only moment a browser lets a page prepare sound.
  try {
    state.audio ??= new AudioContext();
    state.audio.resume();
  } catch {
    state.audio = null;
  }
  setConn('connecting');
  measureSkew();
  connect();
}

function signOut(why = '') {
  state.token = null;
  state.me = null;
  clearTimeout(state.reconnectTimer);
  const ws = state.ws;
  state.ws = null;
  ws?.close(1000);
  state.pending.clear();
  for (const p of state.panels.values()) p.section.remove();
  state.panels.clear();
  state.escalations.clear();
  state.reports.clear();
  state.flags.clear();
  $('esc-list').replaceChildren();
  $('rep-list').replaceChildren();
  hideAlert();
  renderQueues();
  setConn('signed-out');
  $('who').hidden = true;
  $('signout').hidden = true;
  $('sound-wrap').hidden = true;
  $('view-console').hidden = true;
  $('view-signin').hidden = false;
  $('signin-error').textContent = why;
  $('token').focus();
}

// ------------------------------------------------------------ dispatcher

function handle(f) {
  const p = f.ref !== undefined ? state.pending.get(f.ref) : undefined;
  if (p) state.pending.delete(f.ref);
  switch (f.type) {
    case 'welcome': return onWelcome(f);
    case 'ok': return onOk(f, p);
    case 'joined': return onJoined(f);
    case 'error': return onError(f, p);
    case 'message': return state.panels.get(f.room)?.addMessage(f, true);
    case 'presence': return state.panels.get(f.room)?.presence(f);
    case 'deleted': return state.panels.get(f.room)?.removeMessage(f.message);
    case 'flag': return onFlag(f);
    case 'report': return onReport(f);
    case 'escalation': return onEscalation(f);
    case 'invited': return onInvited(f);
    default: return undefined; // unknown events are ignored
  }
}

function onWelcome(f) {
  const again = state.me !== null;
  state.me = f.you;
  state.attempt = 0;
  state.rooms = (f.rooms || []).filter((r) => !r.id.startsWith('care-'));
  if (f.you.role !== 'moderator' && f.you.role !== 'clinician') {
    signOut('That was not a staff sign-in.');
    return;
  }
  setConn('online');
  $('who').textContent = `${f.you.name} · ${roleLabel(f.you.role)}`;
  $('who').hidden = false;
  $('signout').hidden = false;
  $('sound-wrap').hidden = false;
  renderPicker();
  if (!again) {
    $('view-signin').hidden = true;
    $('view-console').hidden = false;
    $('console-title').focus();
    announce(`Signed in as ${f.you.name}, ${roleLabel(f.you.role)}.`);
  }
  if (again) measureSkew();
  // After a reconnect: watch and join again what was on screen.
  for (const p of state.panels.values()) p.subscribe();
  renderQueues();
}

function onOk(f, p) {
  if (!p) return;
  switch (p.kind) {
    case 'watch':
      state.panels.get(p.room)?.load(f);
      break;
    case 'care':
      if (f.id) openCarePanel(f.id, p.escalation);
      break;
    case 'slow_mode':
    case 'lock':
      state.panels.get(p.room)?.setSettings(p.settings);
      showNotice(p.done, true);
      break;
    case 'dismiss_report':
      dropReport(p.report);
      break;
    case 'delete':
      // A held message was never published: no `deleted` event comes for it.
      state.panels.get(p.room)?.removeMessage(p.message);
      showNotice(p.done, true);
      break;
    case 'announce':
      state.panels.get(p.room)?.clearComposer();
      break;
    default:
      if (p.done) showNotice(p.done, true);
  }
}

function onError(f, p) {
  const sentence = f.message || 'Something went wrong.';
  if (p?.kind === 'hello' || f.code === 'unauthorized') {
    signOut(sentence);
    return;
  }
  if ((p?.kind === 'release' || p?.kind === 'delete') && f.code === 'bad_request') {
    // Released or deleted by someone else meanwhile.
    state.panels.get(p.room)?.removeMessage(p.message);
  }
  if (p?.kind === 'watch' || p?.kind === 'join') {
    state.panels.get(p.room)?.section.remove();
    state.panels.delete(p.room);
    renderPicker();
    renderPanels();
  }
  showNotice(sentence);
}

// ------------------------------------------------------------ the rooms

function renderPicker() {
  const list = $('picker-list');
  list.replaceChildren();
  for (const r of state.rooms) {
    const box = el('input', { type: 'checkbox', id: `watch-${r.id}`, checked: state.panels.has(r.id) });
    box.addEventListener('change', () => (box.checked ? watchRoom(r.id) : unwatchRoom(r.id)));
    list.append(el('label', { class: 'pick', htmlFor: `watch-${r.id}` }, box, ` ${r.title}`));
  }
}

function renderPanels() {
  $('panels-empty').hidden = state.panels.size > 0;
  $('panels').dataset.count = String(state.panels.size);
}

function watchRoom(id) {
  if (state.panels.has(id)) return;
  const p = new Panel(id, 'watch');
  state.panels.set(id, p);
  $('panels').append(p.section);
  renderPanels();
  p.subscribe();
}

function unwatchRoom(id) {
  const p = state.panels.get(id);
  if (!p) return;
  send({ type: p.kind === 'watch' ? 'unwatch' : 'leave', room: id });
  p.section.remove();
  state.panels.delete(id);
  renderPanels();
}

function onJoined(f) {
  state.panels.get(f.room)?.load(f);
}

function openCarePanel(room, escalation) {
  let p = state.panels.get(room);
  if (!p) {
    const esc = state.escalations.get(escalation)?.esc;
    p = new Panel(room, 'care', esc ? `Care room with ${esc.peer?.name || 'the person'}` : 'Care room');
    state.panels.set(room, p);
    $('panels').prepend(p.section);
    renderPanels();
    p.subscribe();
  }
  p.heading.focus();
}

function onInvited(f) {
  // A clinician let into a care room, by a colleague (or by their own
  // `care`, whose `ok` opens the panel).
  if (state.panels.has(f.room) || [...state.pending.values()].some((p) => p.kind === 'care')) return;
  const esc = [...state.escalations.values()].find((e) => e.esc.care_room?.room === f.room);
  openCarePanel(f.room, esc?.esc.id);
}

/** One room on screen: a watched room, or a care room this clinician joined. */
class Panel {
  constructor(room, kind, title = roomTitle(room)) {
    this.room = room;
    this.kind = kind; // watch | care
    this.title = title;
    this.members = new Map();
    this.locked = false;
    this.slow = 0;
    this.ids = new Set();
    const hid = `panel-${room}-title`;
    this.heading = el('h3', { id: hid, tabIndex: -1, text: title });
    this.status = el('p', { class: 'status' });
    this.list = el('ol', { class: 'messages', 'aria-label': `Messages in ${title}` });
    this.memberList = el('ul', { class: 'members' });
    this.memberSummary = el('summary', { text: 'People' });
    const head = el('div', { class: 'panel-head' }, this.heading, this.status);
    if (kind === 'care') {
      const close = el('button', { type: 'button', class: 'quiet tiny', text: 'Leave', 'aria-label': `Leave ${title}` });
      close.addEventListener('click', () => unwatchRoom(room));
      head.append(close);
    }
    const people = el('details', { class: 'people' }, this.memberSummary, this.memberList);
    this.section = el('section', { class: `panel ${kind}`, 'aria-labelledby': hid, 'data-room': room }, head);
    if (kind === 'watch') this.section.append(this.tools());
    this.section.append(people, this.list, this.composer());
  }

  subscribe() {
    send({ type: this.kind === 'watch' ? 'watch' : 'join', room: this.room }, { kind: this.kind === 'watch' ? 'watch' : 'join', room: this.room });
  }

  tools() {
    const slow = el('select', { id: `slow-${this.room}` });
    for (const s of SLOW_CHOICES) slow.append(el('option', { value: String(s), text: s === 0 ? 'Off' : s < 60 ? `${s} s` : `${s / 60} min` }));
    const apply = el('button', { type: 'button', class: 'quiet small', text: 'Set slow mode' });
    apply.addEventListener('click', () => {
      const seconds = Number(slow.value);
      send({ type: 'slow_mode', room: this.room, seconds }, {
        kind: 'slow_mode', room: this.room, settings: { slow: seconds },
        done: seconds ? `Slow mode in ${this.title}: one message per ${slow.selectedOptions[0].text}.` : `Slow mode is off in ${this.title}.`,
      });
    });
    this.lockButton = el('button', { type: 'button', class: 'quiet small', text: 'Lock room…' });
    this.lockButton.addEventListener('click', async () => {
      const locked = !this.locked;
      if (locked && !(await confirmAction(`Lock ${this.title}?`, 'Nobody new can join while it is locked. People already in stay and keep talking.', 'Lock room'))) return;
      send({ type: 'lock', room: this.room, locked }, {
        kind: 'lock', room: this.room, settings: { locked },
        done: locked ? `${this.title} is locked: no new joins.` : `${this.title} is open to new people again.`,
      });
    });
    this.slowSelect = slow;
    return el('details', { class: 'tools' },
      el('summary', { text: 'Room settings' }),
      el('div', { class: 'row' }, el('label', { htmlFor: slow.id, text: 'Slow mode' }), slow, apply),
      el('div', { class: 'row' }, this.lockButton));
  }

  composer() {
    const id = `say-${this.room}`;
    const label = this.kind === 'watch' ? `Announce to ${this.title}` : `Message to ${this.title}`;
    this.input = el('textarea', { id, rows: 2, maxLength: 2000, autocomplete: 'off' });
    const form = el('form', { class: 'composer', noValidate: true },
      el('label', { htmlFor: id, class: 'visually-hidden', text: label }),
      this.input,
      el('button', { type: 'submit', class: 'primary small', text: this.kind === 'watch' ? 'Announce' : 'Send' }));
    this.input.placeholder = this.kind === 'watch' ? 'Announcement, shown as from you' : '';
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = this.input.value;
      if (!text.trim()) return;
      send({ type: this.kind === 'watch' ? 'announce' : 'send', room: this.room, text }, { kind: 'announce', room: this.room });
    });
    this.input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        form.requestSubmit();
      }
    });
    return form;
  }

  clearComposer() {
    this.input.value = '';
  }

  /** The `watch` reply or the `joined` reply: members, settings, recent history. */
  load(f) {
    this.members = new Map((f.members || []).map((m) => [m.id, m]));
    this.setSettings({ locked: !!f.locked, slow: f.slow_mode || 0 });
    // Held messages are not in history: the flags of those still held
    // follow this reply.
    this.list.replaceChildren();
    this.ids.clear();
    for (const m of f.history || []) this.addMessage(m, false);
    this.renderMembers();
  }

  setSettings({ locked, slow }) {
    if (locked !== undefined) this.locked = locked;
    if (slow !== undefined) this.slow = slow;
    if (this.lockButton) this.lockButton.textContent = this.locked ? 'Unlock room' : 'Lock room…';
    if (this.slowSelect) this.slowSelect.value = String(SLOW_CHOICES.includes(this.slow) ? this.slow : 0);
    this.renderStatus();
  }

  renderStatus() {
    const peers = [...this.members.values()].filter((m) => m.role === 'peer').length;
    const bits = [`${peers} ${peers === 1 ? 'person' : 'people'}`];
    if (this.slow) bits.push(`slow mode ${this.slow} s`);
    if (this.locked) bits.push('locked');
    this.status.textContent = bits.join(' · ');
  }

  renderMembers() {
    this.memberSummary.textContent = `People (${this.members.size})`;
    this.memberList.replaceChildren();
    const all = [...this.members.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const m of all) {
      const li = el('li', {}, el('span', { text: m.name }));
      if (m.role !== 'peer') li.append(el('span', { class: 'role', text: roleLabel(m.role) }));
      else if (this.kind === 'watch') li.append(personButton(this.room, m));
      this.memberList.append(li);
    }
    this.renderStatus();
  }

  presence(f) {
    if (f.joined) this.members.set(f.joined.id, f.joined);
    if (f.left) this.members.delete(f.left.id);
    this.renderMembers();
  }

  find(id) {
    return this.list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
  }

  addMessage(m, live) {
    if (typeof m.id !== 'string') return;
    const held = this.find(m.id);
    if (held?.classList.contains('held')) {
      keepingFocus(() => held.remove());
    } else if (this.ids.has(m.id)) {
      return;
    }
    this.ids.add(m.id);
    const li = messageItem(this.room, this.kind, m, state.flags.get(m.id), false);
    this.append(li);
    if (live && this.kind === 'care' && m.from?.role === 'peer') announce(`${this.title}: ${m.from.name}: ${m.text}`);
  }

  addHeld(f) {
    if (this.find(f.message)) return;
    const li = messageItem(this.room, this.kind, { id: f.message, room: f.room, from: f.from, text: f.text, ts: f.ts }, f, true);
    this.append(li);
  }

  append(li) {
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    list.append(li);
    if (list.childElementCount > MAX_MESSAGES_PER_ROOM) {
      const oldest = list.querySelector('li.msg:not(.held)');
      if (oldest) keepingFocus(() => oldest.remove());
    }
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  removeMessage(id) {
    const li = this.find(id);
    if (li) keepingFocus(() => li.remove());
  }

  markFlag(f) {
    const li = this.find(f.message);
    if (li && !li.classList.contains('held')) li.replaceWith(messageItem(this.room, this.kind, li.message, f, false));
  }
}

function personButton(room, member) {
  const b = el('button', { type: 'button', class: 'quiet tiny', text: 'Act…', 'aria-label': `Act on ${member.name}` });
  b.addEventListener('click', () => openPerson(room, member, b));
  return b;
}

function messageItem(room, kind, m, flag, held) {
  const role = m.from?.role && m.from.role !== 'peer' ? m.from.role : null;
  const cls = ['msg'];
  if (role) cls.push('staff');
  if (flag) cls.push('flagged');
  if (held) cls.push('held');
  const li = el('li', { class: cls.join(' '), 'data-id': m.id });
  li.message = m;
  if (flag) li.dataset.level = flag.level;
  const who = m.from?.name || 'Someone';
  const meta = el('p', { class: 'meta' }, el('span', { class: 'who', text: who }));
  if (role) meta.append(el('span', { class: 'role', text: roleLabel(role) }));
  if (m.ts) meta.append(el('time', { dateTime: new Date(m.ts).toISOString(), text: timeOf(m.ts) }));
  li.append(meta);
  if (flag) {
    const what = flag.level && flag.level !== 'none' ? levelText(flag.level, flag.categories) : `Policy: ${flag.policy || 'review'}`;
    li.append(el('p', { class: 'flag-line', text: `${held ? 'Held for review' : 'Flagged'} · ${what}` }));
  }
  li.append(el('p', { class: 'text', text: m.text ?? '' }));
  if (kind !== 'watch') return li;
  const actions = el('div', { class: 'msg-actions' });
  if (held) {
    const release = el('button', { type: 'button', class: 'primary tiny', text: 'Release', 'aria-label': `Release held message from ${who}` });
    release.addEventListener('click', () => send({ type: 'release', room, message: m.id }, { kind: 'release', room, message: m.id, done: `Released ${who}'s message to the room.` }));
    actions.append(release);
  }
  const del = el('button', { type: 'button', class: 'quiet tiny', text: 'Delete…', 'aria-label': `Delete ${held ? 'held ' : ''}message from ${who}` });
  del.addEventListener('click', async () => {
    if (!(await confirmAction('Delete this message?', `${who}: “${m.text ?? ''}”. It disappears for everyone in ${roomTitle(room)}.`, 'Delete message'))) return;
    send({ type: 'delete', room, message: m.id }, { kind: 'delete', room, message: m.id, done: 'Message deleted.' });
  });
  actions.append(del);
  if (!role && m.from?.id) actions.append(personButton(room, m.from));
  li.append(actions);
  return li;
}

// ------------------------------------------------------------ flags

function onFlag(f) {
  state.flags.set(f.message, f);
  if (state.flags.size > MAX_FLAGS) state.flags.delete(state.flags.keys().next().value);
  const p = state.panels.get(f.room);
  if (!p) return;
  if (f.held) {
    p.addHeld(f);
    announce(`Held for review in ${roomTitle(f.room)}: a message from ${f.from?.name || 'someone'}, ${levelText(f.level, f.categories)}.`);
  } else {
    p.markFlag(f);
    announce(`Flagged in ${roomTitle(f.room)}: ${f.from?.name || 'someone'}, ${levelText(f.level, f.categories)}.`);
  }
}

// ------------------------------------------------------------ people

function openPerson(room, member, opener) {
  state.person = { room, member, opener };
  $('person-title').textContent = `${member.name} in ${roomTitle(room)}`;
  $('ban-reason').value = '';
  const d = $('person-dialog');
  d.returnValue = '';
  d.showModal();
}

async function closePerson() {
  const t = state.person;
  state.person = null;
  const action = $('person-dialog').returnValue;
  if (!t) return;
  const { room, member } = t;
  const name = member.name;
  if (action === 'mute' || action === 'unmute') {
    const seconds = action === 'mute' ? Number($('mute-for').value) : 0;
    const label = $('mute-for').selectedOptions[0].text;
    send({ type: 'mute', room, peer: member.id, seconds }, {
      kind: 'mute', room, done: seconds ? `${name} is muted in ${roomTitle(room)} for ${label}.` : `${name} may talk again in ${roomTitle(room)}.`,
    });
  } else if (action === 'kick') {
    if (await confirmAction(`Kick ${name}?`, `${name} leaves ${roomTitle(room)} now and is told a moderator asked them to. They can come back later.`, 'Kick')) {
      send({ type: 'kick', room, peer: member.id }, { kind: 'kick', room, done: `${name} was removed from ${roomTitle(room)}.` });
    }
  } else if (action === 'ban') {
    const seconds = Number($('ban-for').value);
    const label = $('ban-for').selectedOptions[0].text;
    const reason = $('ban-reason').value.trim();
    if (await confirmAction(`Ban ${name} for ${label}?`, `${name} leaves every room and cannot join any for ${label}.`, 'Ban')) {
      const frame = { type: 'ban', peer: member.id, seconds };
      if (reason) frame.reason = reason;
      send(frame, { kind: 'ban', done: `${name} is banned for ${label}.` });
    }
  }
  if (t.opener?.isConnected) t.opener.focus();
}

/** A modal confirmation; resolves true when the person confirms. */
function confirmAction(title, text, okLabel) {
  const d = $('confirm-dialog');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  const opener = document.activeElement;
  return new Promise((resolve) => {
    d.addEventListener('close', () => {
      if (opener?.isConnected) opener.focus();
      resolve(d.returnValue === 'ok');
    }, { once: true });
    d.showModal();
    $('confirm-cancel').focus(); // the safe choice first
  });
}

// ------------------------------------------------------------ reports

function onReport(f) {
  if (state.reports.has(f.id)) return;
  const p = state.panels.get(f.room);
  const reporter = p?.members.get(f.reporter)?.name || f.reporter;
  const msg = p?.find(f.message)?.message;
  const li = el('li', { class: 'report', 'data-id': f.id });
  li.append(
    el('p', { class: 'meta' },
      el('strong', { text: f.reason.replace(/_/g, ' ') }),
      el('span', { text: ` · ${roomTitle(f.room)}` }),
      el('time', { dateTime: new Date(f.ts).toISOString(), text: timeOf(f.ts) })),
    el('p', { class: 'text', text: msg ? `${msg.from?.name || 'Someone'}: ${msg.text}` : 'The message is no longer on screen.' }),
    el('p', { class: 'fine', text: `Reported by ${reporter}` }),
  );
  const actions = el('div', { class: 'msg-actions' });
  if (msg) {
    const show = el('button', { type: 'button', class: 'quiet tiny', text: 'Show in room' });
    show.addEventListener('click', () => {
      const target = state.panels.get(f.room)?.find(f.message);
      if (!target) return;
      target.tabIndex = -1;
      target.scrollIntoView({ block: 'center' });
      target.focus();
    });
    actions.append(show);
  }
  const dismiss = el('button', { type: 'button', class: 'quiet tiny', text: 'Dismiss', 'aria-label': `Dismiss report: ${f.reason}` });
  dismiss.addEventListener('click', () => send({ type: 'dismiss_report', report: f.id }, { kind: 'dismiss_report', report: f.id }));
  actions.append(dismiss);
  li.append(actions);
  state.reports.set(f.id, li);
  $('rep-list').prepend(li);
  renderQueues();
  announce(`New report in ${roomTitle(f.room)}: ${f.reason.replace(/_/g, ' ')}.`);
}

function dropReport(id) {
  const li = state.reports.get(id);
  state.reports.delete(id);
  if (!li) return;
  const next = li.nextElementSibling || li.previousElementSibling;
  li.remove();
  renderQueues();
  (next?.querySelector('button') || $('rep-title')).focus?.();
}

// ------------------------------------------------------------ escalations

function onEscalation(f) {
  let item = state.escalations.get(f.id);
  if (f.state === 'resolved') {
    if (item) {
      keepingFocus(() => item.li.remove());
      state.escalations.delete(f.id);
      if (state.alertFor === f.id) hideAlert();
      announce(`Escalation for ${f.peer?.name || 'someone'} resolved${f.resolved?.by ? ` by ${f.resolved.by.name}` : ''}.`);
      if (document.activeElement === document.body) $('esc-title').focus?.();
    }
    renderQueues();
    return;
  }
  const fresh = !item;
  if (fresh) {
    item = new EscalationItem(f);
    state.escalations.set(f.id, item);
  } else {
    item.update(f);
  }
  sortEscalations();
  renderQueues();
  if (f.state !== 'open' && state.alertFor === f.id) hideAlert();
  if (fresh && f.state === 'open') {
    const where = `${f.peer?.name || 'Someone'} in ${roomTitle(f.room)}`;
    if (f.level === 'imminent') raiseAlert(f, where);
    else announce(`New ${LEVEL_LABEL[f.level] || f.level} escalation: ${where}.`);
  }
}

class EscalationItem {
  constructor(esc) {
    const id = esc.id;
    this.title = el('h3', { id: `${id}-title`, tabIndex: -1 });
    this.countdown = el('time', { class: 'countdown' });
    this.cats = el('p', { class: 'cats' });
    this.stateLine = el('p', { class: 'state' });
    this.flagged = el('blockquote', { class: 'flagged-text' });
    this.context = el('ol', { class: 'excerpt' });
    this.contextBox = el('details', { class: 'context' }, el('summary', { text: 'Messages before it' }), this.context);
    this.ack = el('button', { type: 'button', class: 'primary small', text: 'Acknowledge' });
    this.resolve = el('button', { type: 'button', class: 'quiet small', text: 'Resolve…' });
    this.care = el('button', { type: 'button', class: 'quiet small', text: 'Open care room' });
    this.ack.addEventListener('click', () => {
      send({ type: 'ack', escalation: id }, { kind: 'ack' });
      this.pendingFocus = true;
    });
    this.resolve.addEventListener('click', () => openResolve(this));
    this.care.addEventListener('click', () => {
      if (this.esc.care_room?.room && !this.esc.care_room.closed_ts) openCarePanel(this.esc.care_room.room, id);
      else send({ type: 'care', escalation: id }, { kind: 'care', escalation: id });
    });
    const actions = el('div', { class: 'actions' }, this.ack, this.resolve);
    if (state.me?.role === 'clinician') actions.append(this.care);
    this.li = el('li', { class: 'esc', 'data-id': id },
      el('article', { 'aria-labelledby': this.title.id },
        this.title, el('p', { class: 'deadline' }, this.countdown), this.cats, this.stateLine,
        this.flagged, this.contextBox, actions));
    this.update(esc);
  }

  update(esc) {
    this.esc = esc;
    const li = this.li;
    li.dataset.level = esc.level;
    li.dataset.state = esc.state;
    const who = esc.peer?.name || 'someone';
    this.ack.setAttribute('aria-label', `Acknowledge escalation for ${who}`);
    this.resolve.setAttribute('aria-label', `Resolve escalation for ${who}`);
    this.care.setAttribute('aria-label', `${esc.care_room?.room && !esc.care_room.closed_ts ? 'Show' : 'Open'} care room with ${who}`);
    this.title.replaceChildren(
      el('span', { class: 'level', text: LEVEL_LABEL[esc.level] || esc.level }),
      ` ${esc.peer?.name || 'Someone'} · ${roomTitle(esc.room)}`,
    );
    this.cats.textContent = `${(esc.categories || []).map((c) => c.replace(/_/g, ' ')).join(', ') || 'no category'}${esc.tier > 1 ? ` · moved to tier ${esc.tier}` : ''}`;
    if (esc.state === 'acknowledged' && esc.acknowledged) {
      this.stateLine.textContent = `Acknowledged by ${esc.acknowledged.by?.name || 'staff'} at ${timeOf(esc.acknowledged.ts)}`;
    } else {
      this.stateLine.textContent = `Open since ${timeOf(esc.created_ts)}`;
    }
    const lines = esc.excerpt || [];
    const flagged = lines.find((l) => l.flagged) || lines[lines.length - 1];
    this.flagged.textContent = flagged ? flagged.text : '';
    this.context.replaceChildren(...lines.filter((l) => l !== flagged).map((l) =>
      el('li', {}, el('span', { class: 'who', text: `${l.from?.name || 'Someone'}: ` }), l.text)));
    this.contextBox.hidden = this.context.childElementCount === 0;
    this.ack.hidden = esc.state !== 'open';
    if (esc.care_room?.room && !esc.care_room.closed_ts) this.care.textContent = 'Show care room';
    this.tick(serverNow());
    if (this.pendingFocus && esc.state !== 'open') {
      this.pendingFocus = false;
      this.resolve.focus();
    }
  }

  tick(now) {
    const esc = this.esc;
    if (esc.state !== 'open') {
      this.countdown.textContent = 'Acknowledged';
      this.li.classList.remove('overdue', 'soon');
      return;
    }
    const left = esc.ack_deadline_ts - now;
    this.countdown.dateTime = new Date(esc.ack_deadline_ts).toISOString();
    this.countdown.textContent = left >= 0 ? `Acknowledge within ${clock(left)}` : `Overdue by ${clock(-left)}`;
    this.li.classList.toggle('overdue', left < 0);
    this.li.classList.toggle('soon', left >= 0 && left < 20000);
  }
}

function sortEscalations() {
  const items = [...state.escalations.values()].sort((a, b) =>
    (STATE_ORDER[a.esc.state] ?? 2) - (STATE_ORDER[b.esc.state] ?? 2) ||
    (LEVELS[b.esc.level] ?? 0) - (LEVELS[a.esc.level] ?? 0) ||
    a.esc.ack_deadline_ts - b.esc.ack_deadline_ts);
  const list = $('esc-list');
  const now = [...list.children];
  if (items.length === now.length && items.every((it, i) => it.li === now[i])) return;
  keepingFocus(() => list.replaceChildren(...items.map((it) => it.li)));
}

function renderQueues() {
  const open = [...state.escalations.values()].filter((e) => e.esc.state === 'open').length;
  const n = state.escalations.size;
  $('esc-count').textContent = n ? `(${open} open${n > open ? `, ${n - open} acknowledged` : ''})` : '';
  $('esc-empty').hidden = n > 0;
  $('rep-count').textContent = state.reports.size ? `(${state.reports.size})` : '';
  $('rep-empty').hidden = state.reports.size > 0;
  // A background tab shows the open count in its title.
  document.title = open ? `(${open}) Hearth · staff console` : 'Hearth · staff console';
}

setInterval(() => {
  const now = serverNow();
  for (const item of state.escalations.values()) item.tick(now);
  if (state.alertFor) updateAlertText(now);
}, 1000);

// The imminent alert: a visible banner (role=alert, so it is also spoken
// at once), a short sound unless switched off, and the tab title.
function raiseAlert(esc, where) {
  state.alertFor = esc.id;
  state.alertWhere = where;
  updateAlertText(serverNow());
  $('alert').hidden = false;
  if ($('sound').checked) chime();
}

function updateAlertText(now) {
  const esc = state.escalations.get(state.alertFor)?.esc;
  if (!esc) return;
  const left = esc.ack_deadline_ts - now;
  $('alert-text').textContent = `Imminent risk: ${state.alertWhere}. ${left >= 0 ? `Acknowledge within ${clock(left)}.` : `Overdue by ${clock(-left)}.`}`;
}

function hideAlert() {
  state.alertFor = null;
  $('alert').hidden = true;
}

function chime() {
  const ctx = state.audio;
  if (!ctx) return;
  try {
    const t = ctx.currentTime;
    for (const [i, hz] of [880, 660].entries()) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = hz;
      gain.gain.setValueAtTime(0.0001, t + i * 0.25);
      gain.gain.exponentialRampToValueAtTime(0.25, t + i * 0.25 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.25 + 0.22);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t + i * 0.25);
      osc.stop(t + i * 0.25 + 0.24);
    }
  } catch {
    // No sound is not a failure: the banner and the title still show.
  }
}

let resolving = null;
function openResolve(item) {
  resolving = { item, opener: document.activeElement };
  $('resolve-who').textContent = `${LEVEL_LABEL[item.esc.level]} · ${item.esc.peer?.name || 'Someone'} in ${roomTitle(item.esc.room)}`;
  $('resolve-note').value = '';
  const d = $('resolve-dialog');
  d.returnValue = '';
  d.showModal();
  $('resolve-note').focus();
}

function closeResolve() {
  const r = resolving;
  resolving = null;
  if (!r) return;
  if ($('resolve-dialog').returnValue === 'resolve') {
    const frame = { type: 'resolve', escalation: r.item.esc.id };
    const note = $('resolve-note').value.trim();
    if (note) frame.note = note;
    send(frame, { kind: 'resolve', done: 'Escalation resolved.' });
    $('esc-title').tabIndex = -1;
    $('esc-title').focus();
  } else if (r.opener?.isConnected) {
    r.opener.focus();
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => signOut());
  $('notice-close').addEventListener('click', hideNotice);
  $('alert-dismiss').addEventListener('click', () => {
    hideAlert();
    $('esc-title').tabIndex = -1;
    $('esc-title').focus();
  });
  $('alert-show').addEventListener('click', () => {
    const item = state.escalations.get(state.alertFor);
    if (!item) return;
    item.li.scrollIntoView({ block: 'nearest' });
    item.ack.hidden ? item.title.focus() : item.ack.focus();
  });
  $('person-dialog').addEventListener('close', closePerson);
  $('resolve-dialog').addEventListener('close', closeResolve);
  // Enter in the note is a new line; Ctrl+Enter resolves.
  $('resolve-note').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) $('resolve-ok').click();
  });
}

wire();
setConn('signed-out');
$('token').focus();
