// A small, sanitising markdown renderer for step outputs.
//
// Everything is HTML-escaped first; only then are a few constructs turned into tags:
// headings, lists, fenced and inline code, bold, italics and links (http and https only).
// Nothing from the input can produce a tag or an attribute of its own.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const HOLE = "\u0000"; // placeholder delimiter; stripped from the input beforehand

// `text` is already escaped.
function inline(text) {
  const held = [];
  const hold = (html) => `${HOLE}${held.push(html) - 1}${HOLE}`;
  let out = text.replace(/`([^`\n]+)`/g, (_, code) => hold(`<code>${code}</code>`));
  out = out.replace(/\[([^\]\n]+)\]\(([^)\s]+)\)/g, (whole, label, url) => {
    // The URL is escaped text: an &quot; cannot close the attribute. Only http(s) links, and
    // none with code in its address: that stays text.
    if (!/^https?:\/\/[^\s]+$/i.test(url) || url.includes(HOLE)) return whole;
    return hold(`<a href="${url}" rel="noopener noreferrer nofollow" target="_blank">${emphasis(label)}</a>`);
  });
  out = emphasis(out);
  // A link holds the code of its label: what is restored is restored in turn.
  const restore = (html) =>
    html.replace(new RegExp(`${HOLE}(\\d+)${HOLE}`, "g"), (_, i) => restore(held[Number(i)]));
  return restore(out);
}

// A marker opens only before a non-space and closes only after one: "2 * 3 * 4" is arithmetic.
function emphasis(text) {
  return text
    .replace(/\*\*([^\s*](?:[^*\n]*?[^\s*])?)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__([^\s_](?:[^_\n]*?[^\s_])?)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/\*([^\s*](?:[^*\n]*?[^\s*])?)\*/g, "<em>$1</em>")
    .replace(/(^|[^\w])_([^\s_](?:[^_\n]*?[^\s_])?)_(?!\w)/g, "$1<em>$2</em>");
}

// Each pattern matches only where a line starts; the rest is read with string calls. Patterns
// that read a line's end too (a lazy heading text before `\s*$`, blanks before a language)
// read a long run of blanks once per character before it: a 120 KB output froze the tab 11 s.
const FENCE_OPEN = /^\s*```/;
const LANGUAGE = /^[\w+-]*$/;
const HEADING_OPEN = /^\s{0,3}(#{1,6})\s/;
// [^] and not `.`, which stops at a lone \r, so that `$` could fail and the blanks be read again.
const BULLET = /^\s*[-*+]\s+([^]*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+([^]*)$/;

/** A fence line's language ("" for none), or null for a line that is no fence. */
function fenceOf(line) {
  const open = FENCE_OPEN.exec(line);
  if (!open) return null;
  const language = line.slice(open[0].length).trim();
  return LANGUAGE.test(language) ? language : null;
}

/** A heading line's [level, text], or null. A closing run of # goes only after a blank:
 * "## Porting to C#" keeps its C#, and "## ###" is about "###". */
function headingOf(line) {
  const open = HEADING_OPEN.exec(line);
  if (!open) return null;
  const text = line.slice(open[0].length).trim();
  let bare = text.length;
  while (bare > 0 && text[bare - 1] === "#") bare -= 1;
  const closed = bare < text.length && bare > 0 && /\s/.test(text[bare - 1]);
  return [open[1].length, closed ? text.slice(0, bare).trimEnd() : text];
}

/** Markdown text → safe HTML. */
export function renderMarkdown(source) {
  const lines = escapeHtml(String(source ?? "").split(HOLE).join("")).split(/\r?\n/);
  const html = [];
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) html.push(`<p>${inline(paragraph.join(" "))}</p>`);
    paragraph = [];
  };
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const fence = fenceOf(line);
    if (fence !== null) {
      flush();
      const code = [];
      for (i += 1; i < lines.length && fenceOf(lines[i]) === null; i += 1) code.push(lines[i]);
      const lang = fence ? ` class="language-${fence}"` : "";
      html.push(`<pre><code${lang}>${code.join("\n")}</code></pre>`);
      continue;
    }
    const heading = headingOf(line);
    if (heading) {
      flush();
      const level = Math.min(6, heading[0] + 2); // a step output sits under an h2/h3
      html.push(`<h${level}>${inline(heading[1])}</h${level}>`);
      continue;
    }
    const list = BULLET.test(line) ? BULLET : NUMBERED.test(line) ? NUMBERED : null;
    if (list) {
      flush();
      const tag = list === BULLET ? "ul" : "ol";
      // A list the text broke off goes on at its own number ("2." after a paragraph).
      const first = list === NUMBERED ? Number(NUMBERED.exec(line)[1]) : 1;
      const open = first === 1 ? tag : `${tag} start="${first}"`;
      const items = [];
      while (i < lines.length && list.test(lines[i])) {
        items.push(`<li>${inline(list.exec(lines[i]).at(-1).trim())}</li>`);
        i += 1;
      }
      i -= 1;
      html.push(`<${open}>${items.join("")}</${tag}>`);
      continue;
    }
    if (line.trim() === "") flush();
    else paragraph.push(line.trim());
  }
  flush();
  return html.join("\n");
}

// The open block is rendered again at each change while it is at most this long; past it, only
// when it has doubled since (so a long paragraph costs in all about twice its length), the text
// meanwhile appended as text to what was rendered of it.
const TAIL_LIMIT = 4096;

/**
 * A step's output as it streams into `el`, in the HTML renderMarkdown gives for the whole text,
 * without rendering the whole text again at each change: the blocks that are finished (up to
 * the last blank line outside a code fence, where renderMarkdown holds nothing open) are
 * rendered once, and kept; only the open block after them is rendered again. Text that does
 * not extend what is shown (a reset stream, another output) is shown from scratch.
 */
export class MarkdownView {
  constructor(el) {
    this.el = el;
    this.clear();
  }

  /** Forget what is shown (the element is emptied by the next show). */
  clear() {
    this.text = "";
    this.done = 0; // the end of the finished blocks in text
    this.scan = 0; // the start of the first line not looked at (after its newline)
    this.fence = false; // that line is inside a code fence
    this.kept = 0; // child nodes of el that show the finished blocks
    this.any = false; // the finished blocks gave some HTML
    this.tailShown = 0; // the length of the open block when it was last rendered
    this.plain = null; // the text node streamed text goes into until the next render
  }

  /** Show `text`; `final`: it is whole (its step ended), so the open block is rendered now. */
  show(text, final) {
    if (!this.text || !text.startsWith(this.text)) {
      this.clear();
      this.el.replaceChildren();
    }
    if (text === this.text && !(final && this.plain)) return;
    const grown = text.slice(this.text.length);
    this.text = text;
    let boundary = this.done;
    for (let nl = text.indexOf("\n", this.scan); nl >= 0; nl = text.indexOf("\n", this.scan)) {
      const line = text.slice(this.scan, nl).split(HOLE).join("");
      this.scan = nl + 1;
      if (fenceOf(line) !== null) this.fence = !this.fence;
      else if (!this.fence && line.trim() === "") boundary = this.scan;
    }
    const tail = text.slice(boundary);
    if (boundary > this.done) {
      this.dropTail();
      this.append(renderMarkdown(text.slice(this.done, boundary)), true);
      this.kept = this.el.childNodes.length;
      this.done = boundary;
    } else if (!final && tail.length > TAIL_LIMIT && tail.length < 2 * this.tailShown) {
      this.appendPlain(grown);
      return;
    }
    this.dropTail();
    this.append(renderMarkdown(tail), false);
    this.tailShown = tail.length;
  }

  dropTail() {
    while (this.el.childNodes.length > this.kept) this.el.lastChild.remove();
    this.plain = null;
  }

  /** HTML after what is shown, joined as renderMarkdown joins its blocks. */
  append(html, finished) {
    if (!html) return;
    this.el.insertAdjacentHTML("beforeend", (this.any ? "\n" : "") + html);
    if (finished) this.any = true;
  }

  /** Streamed text as text, inside the open block's last paragraph, code or list item. */
  appendPlain(text) {
    if (!this.plain) {
      let box = this.el.childNodes.length > this.kept ? this.el.lastElementChild : null;
      if (box && box.tagName === "PRE") box = box.firstElementChild || box;
      else if (box && (box.tagName === "UL" || box.tagName === "OL")) box = box.lastElementChild || box;
      else if (!box || box.tagName !== "P") box = this.el.appendChild(document.createElement("p"));
      this.plain = box.appendChild(document.createTextNode(""));
    }
    this.plain.appendData(text.split(HOLE).join(""));
  }
}
