// spice-html5 against a SPICE server's port channels, over WebSocket.
//
// Query parameters:
//   ws          the server's WebSocket URI (ws://127.0.0.1:PORT)
//   src, n      a port whose device sends n bytes of the pattern byte i = i mod 251;
//               the page checks every byte as it arrives
//   echo, echo_bytes, chunk
//               a port whose device echoes: the page sends echo_bytes bytes as
//               SPICEVMC_DATA messages of `chunk` bytes and checks what comes back
//   password    the ticket (default empty)
// Either scenario may be left out. The outcome is window.trivmcResult (also shown in
// #status); `done` turns true when every requested scenario has finished or failed.
//
// spice-html5 has no public API for ports beyond the `spice-port-data` and
// `spice-port-event` window events (detail: {channel, data} / {channel, spiceEvent});
// the port's name arrives in PORT_INIT and is kept as channel.portName. To send, the
// page builds a SpiceMiniData of type SPICE_MSGC_SPICEVMC_DATA (101) and calls the
// port connection's send_msg, as spice-html5's own channels do.

import { SpiceMainConn } from '/spice-html5/main.js';
import { SpiceConn } from '/spice-html5/spiceconn.js';
import { SpicePortConn } from '/spice-html5/port.js';
import { SpiceMiniData } from '/spice-html5/spicemsg.js';
import { Constants } from '/spice-html5/enums.js';

const q = new URLSearchParams(window.location.search);
const wsUri = q.get('ws');
const srcName = q.get('src');
const echoName = q.get('echo');
const chunk = Number(q.get('chunk') || 4096);

const t0 = performance.now();
const ms = () => Math.round(performance.now() - t0);

const result = {
  done: false,
  ok: false,
  errors: [],
  port_inits: [], // every PORT_INIT: {name, opened, ms}
  port_events: [], // every PORT_EVENT: {name, event, ms}
  bytes_by_port: {}, // every byte of SPICEVMC_DATA, by port name
  src: null,
  echo: null,
  channels: null, // filled in when done
  tickets_padded: 0, // see send_ticket below
  tickets_short: 0,
};
if (srcName) {
  result.src = {
    name: srcName, expected: Number(q.get('n') || 0), init: false, opened: null,
    received: 0, messages: 0, mismatch: null, complete: false, ms: null,
  };
}
if (echoName) {
  result.echo = {
    name: echoName, total: Number(q.get('echo_bytes') || 0), chunk: chunk, init: false,
    sent: 0, messages_sent: 0, received: 0, mismatch: null, complete: false,
    first_send_ms: null, ms: null,
  };
}
window.trivmcResult = result;

let sc = null;

function status() {
  document.getElementById('status').textContent = JSON.stringify(result, null, 1);
}

function finishIfDone() {
  if (result.done) return;
  const fatal = result.errors.length > 0;
  const srcDone = !result.src || result.src.complete || result.src.mismatch !== null;
  const echoDone = !result.echo || result.echo.complete || result.echo.mismatch !== null;
  if (!fatal && !(srcDone && echoDone)) return;
  result.ok = !fatal && (!result.src || result.src.complete) &&
    (!result.echo || result.echo.complete);
  if (sc) {
    result.channels = {
      ports: (sc.ports || []).map((p) => ({ name: p.portName, opened: p.portOpened, state: p.state })),
      others: (sc.extra_channels || []).filter(Boolean).map((c) => c.channel_type()),
    };
  }
  result.done = true;
  console.log('trivmc page done: ' + JSON.stringify(result));
  status();
}

function fail(what) {
  console.log('trivmc page error: ' + what);
  result.errors.push(what);
  finishIfDone();
}

// The echo payload: an xorshift32 stream, so that a shifted, repeated or dropped
// chunk cannot match by accident.
function echoPayload(n) {
  const out = new Uint8Array(n);
  let x = 0x2545f491;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
const echoBytes = result.echo ? echoPayload(result.echo.total) : null;

function sendEcho(channel) {
  const e = result.echo;
  e.first_send_ms = ms();
  for (let off = 0; off < e.total; off += chunk) {
    const end = Math.min(off + chunk, e.total);
    const msg = new SpiceMiniData();
    msg.type = Constants.SPICE_MSGC_SPICEVMC_DATA;
    msg.data = echoBytes.buffer.slice(off, end);
    msg.size = msg.data.byteLength;
    channel.send_msg(msg);
    e.sent = end;
    e.messages_sent++;
  }
  console.log('trivmc page: sent ' + e.sent + ' bytes in ' + e.messages_sent +
              ' messages to ' + e.name);
}

// spice-html5 0.3.0's rsa_encrypt (ticket.js) turns the RSA ciphertext into bytes via
// BigInteger.toString(16), which drops leading zero bytes; send_ticket then pads at the
// END, so about 1 link in 256 sends a wrong ticket and spice-server (and trivmc, which
// does as it does) answers PERMISSION_DENIED even with ticketing disabled. Left-pad the
// ciphertext to the key's length (RFC 8017 I2OSP) when the page is given pad_ticket=1
// (for spice-server). trivmc repairs such tickets itself, so against trivmc the page
// leaves spice-html5 as it is and only counts the short tickets it sent.
const TICKET_BYTES = Constants.SPICE_TICKET_KEY_PAIR_LENGTH / 8;
const PAD_TICKET = q.get('pad_ticket') === '1';
const origSendTicket = SpiceConn.prototype.send_ticket;
SpiceConn.prototype.send_ticket = function (ticket) {
  if (Array.isArray(ticket) && ticket.length < TICKET_BYTES) {
    result.tickets_short++;
    if (PAD_TICKET) {
      result.tickets_padded++;
      ticket = new Array(TICKET_BYTES - ticket.length).fill(0).concat(ticket);
    }
  }
  return origSendTicket.call(this, ticket);
};

// PORT_INIT is handled inside SpicePortConn (no event); observe it by wrapping.
const origProcess = SpicePortConn.prototype.process_channel_message;
SpicePortConn.prototype.process_channel_message = function (msg) {
  const rc = origProcess.call(this, msg);
  if (msg.type === Constants.SPICE_MSG_PORT_INIT) {
    const info = { name: this.portName, opened: this.portOpened, ms: ms() };
    result.port_inits.push(info);
    console.log('trivmc page: PORT_INIT ' + JSON.stringify(info));
    if (result.src && info.name === result.src.name) {
      result.src.init = true;
      result.src.opened = info.opened;
    }
    if (result.echo && info.name === result.echo.name && !result.echo.init) {
      result.echo.init = true;
      try {
        sendEcho(this);
      } catch (err) {
        fail('sending to the echo port: ' + err);
      }
    }
  }
  return rc;
};

window.addEventListener('spice-port-event', (ev) => {
  const d = ev.detail;
  result.port_events.push({ name: d.channel.portName, event: Array.from(d.spiceEvent), ms: ms() });
});

window.addEventListener('spice-port-data', (ev) => {
  const name = ev.detail.channel.portName;
  const data = new Uint8Array(ev.detail.data);
  if (name === null || name === undefined) {
    fail('SPICEVMC_DATA before PORT_INIT on a port channel');
    return;
  }
  result.bytes_by_port[name] = (result.bytes_by_port[name] || 0) + data.length;
  const s = result.src;
  if (s && name === s.name && s.mismatch === null && !s.complete) {
    let v = s.received % 251;
    for (let j = 0; j < data.length; j++) {
      if (data[j] !== v) {
        s.mismatch = { offset: s.received + j, got: data[j], want: v };
        fail('source pattern mismatch ' + JSON.stringify(s.mismatch));
        return;
      }
      v = v === 250 ? 0 : v + 1;
    }
    s.received += data.length;
    s.messages++;
    if (s.received > s.expected) {
      s.mismatch = { offset: s.expected, got: 'more than expected', want: 'end' };
      fail('source sent ' + s.received + ' bytes, more than ' + s.expected);
      return;
    }
    if (s.received === s.expected) {
      s.complete = true;
      s.ms = ms();
      console.log('trivmc page: source complete, ' + s.received + ' bytes in ' +
                  s.messages + ' messages');
    }
  }
  const e = result.echo;
  if (e && name === e.name && e.mismatch === null && !e.complete) {
    for (let j = 0; j < data.length; j++) {
      const at = e.received + j;
      if (at >= e.total || data[j] !== echoBytes[at]) {
        e.mismatch = { offset: at, got: data[j], want: at < e.total ? echoBytes[at] : 'end' };
        fail('echo mismatch ' + JSON.stringify(e.mismatch));
        return;
      }
    }
    e.received += data.length;
    if (e.received === e.total) {
      e.complete = true;
      e.ms = ms();
      console.log('trivmc page: echo complete, ' + e.received + ' bytes');
    }
  }
  finishIfDone();
});

window.addEventListener('error', (ev) => fail('uncaught: ' + ev.message));

if (!wsUri) {
  fail('no ws= parameter');
} else if (!result.src && !result.echo) {
  fail('neither src= nor echo= given');
} else {
  try {
    sc = new SpiceMainConn({
      uri: wsUri,
      password: q.get('password') || '',
      message_id: 'spice-messages',
      onerror: (e) => fail('spice-html5: ' + (e instanceof Event ? 'WebSocket ' + e.type + ' event' : e)),
      onsuccess: (m) => console.log('trivmc page: main channel: ' + m),
    });
    result.connecting_ms = ms();
  } catch (err) {
    fail('SpiceMainConn: ' + err);
  }
}
status();
