// Hearth peer page: speaks the wire protocol (docs/protocol.md) over /ws.
// Plain modern JavaScript, no build step, no dependencies. Every piece of
// text from the server or another person goes into the page with
// textContent, never as HTML.

import { $, el, announce, timeOf, roleLabel, connectLink, retryLater, sendFrame, showNotice, hideNotice } from './common.js';

const STORE = {
  session: 'hearth.session', // resume token: this tab only, never an address
  ack: 'hearth.guidelines', // rooms whose guidelines this tab accepted
  ids: 'hearth.ids', // our own peer ids in this tab (a restart may issue a new one)
  resources: 'hearth.resources', // the last `support.resources`
};

const store = {
  get(key, fallback) {
    try {
      const v = sessionStorage.getItem(key);
      return v === null ? fallback : JSON.parse(v);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      sessionStorage.setItem(key, JSON.stringify(value));
    } catch {
      // Private modes may refuse storage; the page still works without it.
    }
  },
};

const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOW_MS = 5000;
const ROOMS_REFRESH_MS = 15000;

const state = {
  ws: null,
  conn: 'connecting', // connecting | online | reconnecting | moved
  attempt: 0,
  reconnectTimer: null,
  everConnected: false,
  nextRef: 1,
  pending: new Map(), // ref -> {kind, room, ...}
  me: null,
  myIds: new Set(store.get(STORE.ids, [])),
  rooms: [], // welcome.rooms / api/rooms
  limits: { max_text_chars: 2000 },
  // room id -> RoomView (rooms this tab is in, or joining)
  joined: new Map(),
  view: 'rooms',
  current: null, // room id shown in chat / guidelines
  acked: new Set(store.get(STORE.ack, [])),
  waitUntil: 0, // composer blocked (rate limit / slow mode / mute) until
  waitTimer: null,
  waitKind: null,
  lastTypingSent: 0,
  invite: null,
  reportTarget: null,
};

// ---------------------------------------------------------------- helpers

function roomTitle(id) {
  const r = state.rooms.find((x) => x.id === id);
  if (r) return r.title;
  return id.startsWith('care-') ? 'Private room' : id;
}

// ------------------------------------------------------- connection status

function setConn(s) {
  state.conn = s;
  document.documentElement.dataset.conn = s;
  const text = {
    connecting: 'Connecting…',
    online: '',
    reconnecting: 'Reconnecting…',
    moved: 'Open in another tab',
  }[s];
  $('conn').textContent = text;
  updateComposer();
}

// ------------------------------------------------------------ the socket

function send(frame, pending) {
  return sendFrame(state, frame, pending);
}

function connect() {
  const made = connectLink(state, {
    hello: () => {
      const hello = { type: 'hello', locale: navigator.language || 'en' };
      const token = store.get(STORE.session, null);
      if (token) hello.resume = token;
      return hello;
    },
    onFrame: handle,
    onClose,
  });
  if (!made) scheduleReconnect();
}

function onClose(ev) {
  state.sending = false;
  for (const r of state.joined.values()) r.live = false;
  updateComposer();
  if (ev.code === 1000 && /resumed on another/.test(ev.reason)) {
    setConn('moved');
    showNotice('This conversation is now open in another tab or window. Close that one, or reload this page to continue here.');
    return;
  }
  if (ev.code === 1008) {
    showNotice('A moderator has removed you from the rooms for now.');
  }
  scheduleReconnect(ev.code === 1012);
}

function scheduleReconnect(restarting = false) {
  setConn(state.everConnected ? 'reconnecting' : 'connecting');
  retryLater(state, connect, restarting);
}

window.addEventListener('online', () => {
  if (!state.ws && state.conn !== 'moved') {
    state.attempt = 0;
    connect();
  }
});

// ------------------------------------------------------------ dispatcher

function handle(f) {
  const p = f.ref !== undefined ? state.pending.get(f.ref) : undefined;
  if (p) state.pending.delete(f.ref);
  switch (f.type) {
    case 'welcome': return onWelcome(f);
    case 'joined': return onJoined(f, p);
    case 'left': return onLeft(f);
    case 'ok': return onOk(f, p);
    case 'error': return onError(f, p);
    case 'message': return onMessage(f, true);
    case 'presence': return onPresence(f);
    case 'typing': return onTyping(f);
    case 'support': return onSupport(f);
    case 'kicked': return onKicked(f);
    case 'deleted': return onDeleted(f);
    case 'invited': return onInvited(f);
    default: return undefined; // unknown events are ignored
  }
}

function onWelcome(f) {
  const previous = state.me;
  state.me = f.you;
  state.myIds.add(f.you.id);
  store.set(STORE.ids, [...state.myIds]);
  store.set(STORE.session, f.session);
  state.attempt = 0;
  state.everConnected = true;
  if (f.limits) state.limits = f.limits;
  setRooms(f.rooms || []);
  setConn('online');
  $('me-line').textContent = `your name here is “${f.you.name}”`;
  $('text').maxLength = state.limits.max_text_chars;

  if (previous && !f.resumed && previous.id !== f.you.id) {
    for (const r of state.joined.values()) {
      systemLine(r, `You're back, now as “${f.you.name}”: the server started afresh.`);
    }
  }
  // Rooms to be in: those this tab shows, and those the session still holds
  // (after a reload). Re-join each with `since`, so nothing is missed.
  const want = new Set(state.joined.keys());
  for (const id of f.joined || []) {
    if (state.acked.has(id) || id.startsWith('care-')) want.add(id);
  }
  for (const id of want) joinRoom(id);
}

function setRooms(rooms) {
  state.rooms = rooms;
  renderRooms();
}

// ---------------------------------------------------------------- rooms

// Updates the list in place when the rooms are the same ones, so a
// refresh never takes keyboard focus away from a room button.
function renderRooms() {
  const list = $('room-list');
  const buttons = [...list.querySelectorAll('button.room')];
  const same =
    buttons.length === state.rooms.length && buttons.every((b, i) => b.dataset.room === state.rooms[i].id);
  if (!same) {
    list.replaceChildren();
    for (const r of state.rooms) {
      const b = el(
        'button',
        { type: 'button', class: 'room', 'data-room': r.id },
        el('span', { class: 'title' }, el('span', { class: 'name' }), el('span', { class: 'tag' })),
        el('span', { class: 'desc' }),
        el('span', { class: 'count' }),
      );
      b.addEventListener('click', () => chooseRoom(b.dataset.room));
      list.append(el('li', {}, b));
    }
  }
  const all = list.querySelectorAll('button.room');
  state.rooms.forEach((r, i) => {
    const b = all[i];
    const room = state.joined.get(r.id);
    const unread = room?.unread || 0;
    b.querySelector('.name').textContent = r.title;
    const tag = b.querySelector('.tag');
    tag.textContent = room ? (unread ? `You're in · ${unread} new` : "You're in") : '';
    tag.hidden = !room;
    b.querySelector('.desc').textContent = r.description;
    b.querySelector('.count').textContent =
      `${r.members} of ${r.capacity} here${r.locked ? ' · not taking new members right now' : ''}`;
  });
  list.setAttribute('aria-busy', 'false');
}

async function refreshRooms() {
  try {
    const res = await fetch('/api/rooms', { cache: 'no-store' });
    if (!res.ok) return;
    const body = await res.json();
    if (Array.isArray(body.rooms)) setRooms(body.rooms);
  } catch {
    // offline: the socket's reconnect will tell
  }
}

let roomsRefreshSoon = null;
function refreshRoomsSoon() {
  if (roomsRefreshSoon) return;
  roomsRefreshSoon = setTimeout(() => {
    roomsRefreshSoon = null;
    refreshRooms();
  }, 800);
}
setInterval(() => {
  if (state.view === 'rooms' && !document.hidden) refreshRooms();
}, ROOMS_REFRESH_MS);

async function chooseRoom(id) {
  hideNotice();
  if (state.joined.has(id) || state.acked.has(id)) {
    state.current = id;
    if (!state.joined.has(id)) joinRoom(id);
    showChat(id);
    return;
  }
  // Guidelines first; the room is joined once they are accepted.
  state.current = id;
  let text = null;
  try {
    const res = await fetch(`/api/rooms/${encodeURIComponent(id)}/guidelines`, { cache: 'no-store' });
    if (res.ok) text = (await res.json()).guidelines;
  } catch {
    text = null;
  }
  if (text == null) {
    // Not listed (a care room) or unreachable: join, and show the
    // guidelines from `joined` before the first message.
    joinRoom(id);
    return;
  }
  showGuidelines(id, text);
}

function showGuidelines(id, text) {
  state.current = id;
  $('guidelines-title').textContent = `Before you join ${roomTitle(id)}`;
  $('guidelines-text').textContent = text;
  show('guidelines');
  $('guidelines-title').focus();
}

function acceptGuidelines() {
  const id = state.current;
  if (!id) return;
  state.acked.add(id);
  store.set(STORE.ack, [...state.acked]);
  if (!state.joined.has(id) || !state.joined.get(id).live) joinRoom(id);
  showChat(id);
}

// ------------------------------------------------------------ room views

class RoomView {
  constructor(id) {
    this.id = id;
    this.epoch = null;
    this.seq = 0; // last seq seen in `epoch`
    this.ids = new Set(); // message ids on screen (dedupe across epochs)
    this.held = new Map(); // held message id -> element
    this.members = new Map();
    this.typing = new Map(); // member id -> {name, until}
    this.staffWatching = 0;
    this.live = false;
    this.unread = 0;
    this.guidelines = '';
    this.list = el('ol', { class: 'messages', id: 'messages', 'aria-label': `Messages in ${roomTitle(id)}` });
  }
}

function roomView(id) {
  let r = state.joined.get(id);
  if (!r) {
    r = new RoomView(id);
    state.joined.set(id, r);
  }
  return r;
}

function joinRoom(id) {
  const r = roomView(id);
  const frame = { type: 'join', room: id };
  if (r.epoch) frame.since = { seq: r.seq, epoch: r.epoch };
  send(frame, { kind: 'join', room: id });
}

function onJoined(f) {
  const r = roomView(f.room);
  const rejoin = r.epoch !== null;
  if (r.epoch !== f.epoch) r.seq = 0; // a new life of the room's sequence
  r.epoch = f.epoch;
  r.guidelines = f.guidelines || '';
  r.members = new Map((f.members || []).map((m) => [m.id, m]));
  r.staffWatching = f.staff_watching || 0;
  if (f.gap && rejoin) {
    systemLine(r, 'Some messages from while you were away could not be recovered.');
  }
  for (const m of f.history || []) onMessage(m, false);
  r.seq = Math.max(r.seq, f.seq || 0);
  r.live = true;
  renderPresence();
  renderRooms();
  updateComposer();
  if (state.current === f.room && !state.acked.has(f.room) && state.view !== 'guidelines') {
    // Guidelines not read yet (a care room, or they could not be fetched
    // before joining): show the ones `joined` carries before any message.
    showGuidelines(f.room, r.guidelines);
  }
}

function onLeft(f) {
  state.joined.delete(f.room);
  if (state.current === f.room) {
    state.current = null;
    show('rooms');
    $('rooms-title').focus();
  }
  showNotice(`You left ${roomTitle(f.room)}.`, true);
  renderRooms();
  refreshRoomsSoon();
}

function onKicked(f) {
  state.joined.delete(f.room);
  if (state.current === f.room) {
    state.current = null;
    show('rooms');
  }
  showNotice(`A moderator asked you to leave ${roomTitle(f.room)} for now. You can come back later.`);
  renderRooms();
}

function onMessage(m, live) {
  const r = state.joined.get(m.room);
  if (!r || typeof m.id !== 'string') return;
  const heldEl = r.held.get(m.id);
  if (heldEl) {
    heldEl.remove();
    r.held.delete(m.id);
  }
  if (r.ids.has(m.id)) return;
  if (typeof m.seq === 'number') {
    if (m.seq <= r.seq) return; // already seen in this epoch
    r.seq = Math.max(r.seq, m.seq);
  }
  r.ids.add(m.id);
  const own = state.myIds.has(m.from?.id);
  appendMessage(r, m, { own, fresh: live });
  if (live && !own) {
    if (state.current === m.room && state.view === 'chat' && !document.hidden) {
      announce(`${m.from?.name || 'Someone'}: ${m.text}`);
    } else {
      r.unread++;
      renderRooms();
    }
    // Whoever just spoke is no longer typing.
    r.typing.delete(m.from?.id);
    renderTyping();
  }
}

function messageElement(m, { own, held }) {
  const role = m.from?.role && m.from.role !== 'peer' ? m.from.role : null;
  const cls = ['msg'];
  if (own) cls.push('own');
  if (role) cls.push('staff');
  if (held) cls.push('held');
  const li = el('li', { class: cls.join(' '), 'data-id': m.id });
  if (m.seq != null) li.dataset.seq = String(m.seq);
  const meta = el('p', { class: 'meta' });
  meta.append(el('span', { class: 'who', text: own ? `${m.from?.name || 'You'} (you)` : m.from?.name || 'Someone' }));
  if (role) meta.append(el('span', { class: 'role', text: roleLabel(role) }));
  if (m.ts) meta.append(el('time', { dateTime: new Date(m.ts).toISOString(), text: timeOf(m.ts) }));
  if (held) meta.append(el('span', { text: '· waiting for a moderator before others see it' }));
  if (!own && !held && m.id) {
    const rep = el('button', {
      type: 'button',
      class: 'report',
      text: 'Report',
      'aria-label': `Report message from ${m.from?.name || 'someone'}`,
    });
    rep.addEventListener('click', () => openReport(m));
    meta.append(rep);
  }
  li.append(meta, el('p', { class: 'text', text: m.text }));
  return li;
}

function appendMessage(r, m, opts) {
  const li = messageElement(m, opts);
  if (opts.fresh) li.classList.add('fresh');
  const list = r.list;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.append(li);
  if (atBottom || opts.own) list.scrollTop = list.scrollHeight;
}

function systemLine(r, text) {
  r.list.append(el('li', { class: 'sys', text }));
  r.list.scrollTop = r.list.scrollHeight;
}

function onDeleted(f) {
  const r = state.joined.get(f.room);
  if (!r) return;
  const li = r.list.querySelector(`li[data-id="${CSS.escape(f.message)}"]`);
  if (li) {
    li.remove();
    announce('A moderator removed a message.');
  }
  r.held.delete(f.message);
}

function onPresence(f) {
  const r = state.joined.get(f.room);
  if (r) {
    if (f.joined) r.members.set(f.joined.id, f.joined);
    if (f.left) {
      r.members.delete(f.left.id);
      r.typing.delete(f.left.id);
    }
    if (state.current === f.room) renderPresence();
  }
  const info = state.rooms.find((x) => x.id === f.room);
  if (info && r) {
    info.members = r.members.size;
    renderRooms();
  }
  refreshRoomsSoon();
}

function renderPresence() {
  const r = state.current && state.joined.get(state.current);
  if (!r) return;
  const members = [...r.members.values()];
  const n = members.length;
  let summary = n === 1 ? 'Just you here' : `${n} people here`;
  if (r.staffWatching > 0) summary += ' · a moderator is keeping watch';
  $('presence-summary').textContent = summary;
  const ul = $('members');
  ul.replaceChildren();
  members.sort((a, b) => a.name.localeCompare(b.name));
  for (const m of members) {
    let label = m.name;
    if (state.myIds.has(m.id)) label += ' (you)';
    if (m.role && m.role !== 'peer') label += ` · ${roleLabel(m.role)}`;
    ul.append(el('li', { text: label }));
  }
}

function onTyping(f) {
  const r = state.joined.get(f.room);
  if (!r || !f.from || state.myIds.has(f.from.id)) return;
  r.typing.set(f.from.id, { name: f.from.name, until: Date.now() + TYPING_SHOW_MS });
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOW_MS + 50);
}

function renderTyping() {
  const r = state.current && state.joined.get(state.current);
  const now = Date.now();
  let names = [];
  if (r) {
    for (const [id, t] of r.typing) if (t.until < now) r.typing.delete(id);
    names = [...r.typing.values()].map((t) => t.name);
  }
  $('typing').textContent =
    names.length === 0 ? '' :
    names.length === 1 ? `${names[0]} is typing…` :
    names.length === 2 ? `${names[0]} and ${names[1]} are typing…` :
    'Several people are typing…';
}

// ------------------------------------------------------------ chat view

function showChat(id) {
  const r = roomView(id);
  state.current = id;
  r.unread = 0;
  $('chat-title').textContent = roomTitle(id);
  $('text-label').textContent = `Message to ${roomTitle(id)}`;
  $('messages').replaceWith(r.list);
  show('chat');
  renderPresence();
  renderTyping();
  updateComposer();
  r.list.scrollTop = r.list.scrollHeight;
  $('text').focus();
}

function show(view) {
  state.view = view;
  $('view-rooms').hidden = view !== 'rooms';
  $('view-guidelines').hidden = view !== 'guidelines';
  $('view-chat').hidden = view !== 'chat';
  if (view === 'rooms') {
    renderRooms();
    refreshRooms();
  }
}

function updateComposer() {
  const r = state.current && state.joined.get(state.current);
  const waiting = Date.now() < state.waitUntil;
  const online = state.conn === 'online' && r && r.live;
  $('send').disabled = !online || waiting || state.sending;
  const hint = $('composer-hint');
  if (waiting) return; // the countdown owns the hint
  hint.classList.remove('wait');
  if (state.conn !== 'online') hint.textContent = 'Reconnecting… your message will wait here.';
  else if (r && !r.live) hint.textContent = 'Joining the room…';
  else hint.textContent = 'Enter sends · Shift+Enter for a new line';
}

function submitMessage(ev) {
  ev?.preventDefault();
  const id = state.current;
  const area = $('text');
  const text = area.value;
  if (!id || $('send').disabled) return;
  if (!text.trim()) {
    showNotice('Write something first, then send.');
    return;
  }
  if (!state.acked.has(id)) {
    showGuidelines(id, state.joined.get(id)?.guidelines || '');
    return;
  }
  const ref = send({ type: 'send', room: id, text }, { kind: 'send', room: id, text });
  if (ref !== null) {
    state.sending = true;
    updateComposer();
  }
}

function maybeSendTyping() {
  const id = state.current;
  const r = id && state.joined.get(id);
  if (!r || !r.live || !$('text').value) return;
  const now = Date.now();
  if (now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
  state.lastTypingSent = now;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: 'typing', room: id }));
  }
}

function onOk(f, p) {
  if (!p) return;
  if (p.kind === 'send') {
    state.sending = false;
    if (state.current === p.room) {
      $('text').value = '';
    }
    if (f.held) {
      const r = state.joined.get(p.room);
      if (r && f.id && !r.ids.has(f.id)) {
        const li = messageElement(
          { id: f.id, room: p.room, text: p.text, from: state.me, ts: Date.now() },
          { own: true, held: true },
        );
        r.held.set(f.id, li);
        r.list.append(li);
        r.list.scrollTop = r.list.scrollHeight;
        announce('Your message is waiting for a moderator before others see it.');
      }
    }
    updateComposer();
  } else if (p.kind === 'report') {
    showNotice('Thank you. A moderator will look at it.', true);
  }
}

function onError(f, p) {
  const sentence = f.message || 'Something went wrong.';
  if (p?.kind === 'send') {
    state.sending = false;
    updateComposer();
  }
  switch (f.code) {
    case 'rate_limited':
    case 'slow_mode':
      if (f.retry_after_ms) {
        waitComposer(Date.now() + f.retry_after_ms, f.code, sentence);
        return;
      }
      break;
    case 'muted':
      if (f.until) {
        waitComposer(f.until, 'muted', sentence);
        showNotice(`${sentence} You can write again at ${timeOf(f.until)}.`);
        return;
      }
      break;
    case 'room_full':
    case 'room_locked':
    case 'no_such_room':
    case 'banned':
      if (p?.kind === 'join') {
        state.joined.delete(p.room);
        if (state.current === p.room) {
          state.current = null;
          show('rooms');
        }
        renderRooms();
        const until = f.until ? ` You can try again after ${timeOf(f.until)}.` : '';
        showNotice(sentence + until);
        return;
      }
      break;
    case 'not_joined':
      if (p?.room) {
        joinRoom(p.room);
      }
      break;
    case 'unavailable':
      if (p?.kind === 'hello') {
        showNotice(sentence);
        state.ws?.close();
        return;
      }
      break;
    default:
      break;
  }
  showNotice(sentence);
}

// Blocks sending until `until`, with a countdown in the hint.
function waitComposer(until, kind, sentence) {
  state.waitUntil = until;
  state.waitKind = kind;
  clearInterval(state.waitTimer);
  const hint = $('composer-hint');
  const tick = () => {
    const left = Math.ceil((state.waitUntil - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(state.waitTimer);
      state.waitTimer = null;
      state.waitUntil = 0;
      updateComposer();
      return;
    }
    hint.classList.add('wait');
    if (kind === 'muted') hint.textContent = `You are muted here until ${timeOf(until)}.`;
    else hint.textContent = `${kind === 'slow_mode' ? 'Slow mode' : 'Take a breath'}: you can send again in ${left} s.`;
    $('send').disabled = true;
  };
  if (kind !== 'muted') showNotice(sentence, true);
  tick();
  state.waitTimer = setInterval(tick, 1000);
}

// ---------------------------------------------------------- support, help

function defaultResources() {
  const lang = navigator.language || 'en';
  const region = (lang.split('-')[1] || '').toUpperCase();
  const emergency = {
    US: '911', CA: '911', MX: '911', GB: '999 or 112', IE: '112 or 999',
    AU: '000', NZ: '111', IN: '112', ZA: '10111 or 112', JP: '119', BR: '188 (CVV) or 192',
  }[region] || '112 (in Europe) or your local emergency number';
  return [
    { name: 'Emergency services', contact: `If you are in danger right now, call ${emergency}.` },
    { name: 'Find a Helpline', contact: 'findahelpline.com lists free, confidential lines in your country.', href: 'https://findahelpline.com' },
  ];
}

function renderResources(ul, resources) {
  ul.replaceChildren();
  for (const r of resources) {
    const li = el('li', {}, el('strong', { text: r.name }));
    const contact = el('span', { text: r.contact });
    li.append(contact);
    if (r.href || /findahelpline\.com/.test(r.contact)) {
      li.append(' ', el('a', {
        href: r.href || 'https://findahelpline.com',
        target: '_blank',
        rel: 'noopener noreferrer',
        text: 'Open findahelpline.com',
      }));
    }
    ul.append(li);
  }
}

function helpResources() {
  const got = store.get(STORE.resources, null);
  return Array.isArray(got) && got.length ? got : defaultResources();
}

function toggleHelp(open) {
  const panel = $('help');
  const want = open ?? panel.hidden;
  panel.hidden = !want;
  $('help-toggle').setAttribute('aria-expanded', String(want));
  if (want) {
    renderResources($('help-list'), helpResources());
    $('help-title').setAttribute('tabindex', '-1');
    $('help-title').focus();
  } else {
    $('help-toggle').focus();
  }
}

function onSupport(f) {
  const resources = Array.isArray(f.resources) ? f.resources : [];
  if (resources.length) store.set(STORE.resources, resources);
  $('support-text').textContent = f.text || '';
  renderResources($('support-list'), resources.length ? resources : defaultResources());
  $('support').hidden = false;
  $('support').dataset.level = f.level || '';
  announce(`${f.text || ''} ${resources.map((r) => `${r.name}: ${r.contact}`).join('. ')}`);
  if (!$('help').hidden) renderResources($('help-list'), helpResources());
}

// ------------------------------------------------------------- invitation

function onInvited(f) {
  state.invite = f.room;
  const by = f.by?.name ? `${f.by.name}, a ${roleLabel(f.by.role).toLowerCase() || 'member of staff'},` : 'A clinician';
  $('invite-text').textContent = `${by} has opened a private room to talk with you. Only you and the people caring for you can see it.`;
  $('invite').hidden = false;
  announce('You have been invited to a private room.');
}

function acceptInvite() {
  const id = state.invite;
  $('invite').hidden = true;
  state.invite = null;
  if (!id) return;
  state.current = id;
  state.acked.delete(id);
  joinRoom(id);
}

// ----------------------------------------------------------------- report

function openReport(m) {
  state.reportTarget = { room: m.room, id: m.id, opener: document.activeElement };
  $('report-quote').textContent = `${m.from?.name || 'Someone'}: ${m.text}`;
  $('report-dialog').returnValue = '';
  $('report-dialog').showModal();
}

function closeReport() {
  const d = $('report-dialog');
  const t = state.reportTarget;
  state.reportTarget = null;
  if (t && d.returnValue === 'send') {
    const reason = new FormData($('report-form')).get('reason') || 'unspecified';
    send({ type: 'report', room: t.room, message: t.id, reason }, { kind: 'report', room: t.room });
  }
  if (t?.opener?.isConnected) t.opener.focus();
}

// ------------------------------------------------------------------ wiring

function wire() {
  $('help-toggle').addEventListener('click', () => toggleHelp());
  $('help-close').addEventListener('click', () => toggleHelp(false));
  $('notice-close').addEventListener('click', hideNotice);
  $('support-close').addEventListener('click', () => {
    $('support').hidden = true;
    $('main').focus();
  });
  $('guidelines-accept').addEventListener('click', acceptGuidelines);
  $('guidelines-back').addEventListener('click', () => {
    state.current = null;
    show('rooms');
    $('rooms-title').focus();
  });
  $('chat-back').addEventListener('click', () => {
    state.current = null;
    show('rooms');
    $('rooms-title').focus();
  });
  $('chat-leave').addEventListener('click', () => {
    if (state.current) send({ type: 'leave', room: state.current }, { kind: 'leave', room: state.current });
  });
  $('composer').addEventListener('submit', submitMessage);
  $('text').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      submitMessage();
    }
  });
  $('text').addEventListener('input', maybeSendTyping);
  $('invite-join').addEventListener('click', acceptInvite);
  $('invite-later').addEventListener('click', () => {
    $('invite').hidden = true;
  });
  $('report-dialog').addEventListener('close', closeReport);
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && !$('help').hidden) toggleHelp(false);
  });
  renderResources($('help-list'), helpResources());
}

wire();
setConn('connecting');
connect();
