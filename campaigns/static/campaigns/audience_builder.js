/* Audience builder of the campaign admin: edits the audience predicate (campaigns/predicates.py) as
 * nested AND/OR groups and keeps it in sync, both ways, with the JSON in the Audience field.
 *
 * The whitelist (fields, patterned fields with their choices, operators per kind) comes from the
 * server as JSON (#audience-builder-schema, campaigns.predicates.builder_schema). The server stays
 * the authority: it validates on save and its messages carry the JSON path of the bad node, which
 * the builder uses to mark that node. Nothing the builder cannot show is lost: such a node stays as
 * editable JSON inside the tree, and values are only re-read from an input once it is edited.
 * Dependency-free on purpose (the admin has no build step).
 */
(function () {
  "use strict";

  var textarea = document.getElementById("id_audience");
  var root = document.getElementById("audience-builder");
  var schemaScript = document.getElementById("audience-builder-schema");
  if (!textarea || !root || !schemaScript) return;
  var schema = JSON.parse(schemaScript.textContent);

  var FIELD_GROUPS = {
    string: "Recipient attributes",
    datetime: "Recipient attributes",
    json: "Recipient attributes",
    bool: "Preference state and reachability"
  };
  var OP_LABELS = {
    eq: "equals", ne: "does not equal", "in": "is one of", not_in: "is none of", contains: "contains",
    startswith: "starts with", endswith: "ends with", exists: "exists", before: "before", after: "after",
    within_days: "within the last … days", older_than_days: "more than … days ago", lt: "<", lte: "≤",
    gt: ">", gte: "≥", is: "is"
  };
  var nextId = 1;
  var model = null;      // the root group
  var status = root.querySelector(".ab-status");
  var tree = root.querySelector(".ab-tree");

  // -- the whitelist -----------------------------------------------------------------------------
  function patternRegex(p) {
    var parts = p.pattern.split(/<\w+>/).map(function (s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); });
    return new RegExp("^" + parts.join("([^:]*)") + "$");
  }
  schema.patterns.forEach(function (p) { p.regex = patternRegex(p); });

  /** {kind, plain, pattern, args} for a field name; kind null for a field the whitelist lacks. */
  function resolve(field) {
    for (var i = 0; i < schema.fields.length; i++) {
      if (schema.fields[i].name === field) return {kind: schema.fields[i].kind, plain: schema.fields[i]};
    }
    for (var j = 0; j < schema.patterns.length; j++) {
      var m = schema.patterns[j].regex.exec(field);
      if (m) return {kind: schema.patterns[j].kind, pattern: schema.patterns[j], args: m.slice(1)};
    }
    return {kind: null};
  }
  function fillPattern(p, args) {
    var i = 0;
    return p.pattern.replace(/<\w+>/g, function () { return args[i++] || ""; });
  }
  function opsOf(kind) { return kind ? schema.operators[kind] : []; }

  // -- values: which input an operator takes, and its default ------------------------------------
  function editorOf(kind, op) {
    if (kind === null) return "raw";
    if (op === "is" || op === "exists") return "bool";
    if (op === "in" || op === "not_in") return kind === "json" ? "jsonlist" : "list";
    if (op === "within_days" || op === "older_than_days") return "days";
    if (op === "before" || op === "after") return "date";
    if (kind === "json" && op !== "contains") return "json";
    return "text";
  }
  function defaultValue(editor) {
    return {bool: true, list: [], jsonlist: [], days: 30, date: "", json: "", text: "", raw: ""}[editor];
  }
  function typeOf(value) {
    if (Array.isArray(value)) {
      var types = value.map(typeOf).filter(function (t, i, all) { return all.indexOf(t) === i; });
      return types.length === 1 ? types[0] : (types.length === 0 ? "string" : "mixed");
    }
    return {string: "string", number: "number", "boolean": "boolean"}[typeof value] || "mixed";
  }
  function convert(raw, type) {
    if (type === "number") { var n = raw.trim() === "" ? NaN : Number(raw); return isNaN(n) ? null : n; }
    if (type === "boolean") { return raw.trim() === "true" ? true : (raw.trim() === "false" ? false : null); }
    return raw;
  }
  function splitList(raw) { return raw.split(",").map(function (v) { return v.trim(); }).filter(Boolean); }
  function shown(value) {
    if (value === undefined || value === null) return "";
    if (Array.isArray(value)) return value.map(shown).join(", ");
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  // -- JSON <-> model ----------------------------------------------------------------------------
  function group(mode, children, not) { return {id: nextId++, type: "group", mode: mode, children: children, not: !!not}; }
  function condition(field, op, value) { return {id: nextId++, type: "cond", field: field, op: op, value: value, not: false}; }
  function raw(json) { return {id: nextId++, type: "raw", json: json, text: JSON.stringify(json, null, 1), not: false}; }

  function isObject(x) { return x !== null && typeof x === "object" && !Array.isArray(x); }
  function parse(node) {
    if (!isObject(node)) return raw(node);
    var keys = Object.keys(node);
    if (keys.length === 1 && keys[0] === "not" && isObject(node.not) && !("not" in node.not)) {
      var inner = parse(node.not);
      if (inner.type === "raw") return raw(node);
      inner.not = true;
      return inner;
    }
    if (keys.length === 1 && (keys[0] === "all" || keys[0] === "any") && Array.isArray(node[keys[0]])) {
      return group(keys[0], node[keys[0]].map(parse));
    }
    var known = keys.every(function (k) { return k === "field" || k === "op" || k === "value"; });
    if (known && typeof node.field === "string" && typeof node.op === "string") {
      return condition(node.field, node.op, node.value);
    }
    return raw(node);
  }
  /** The root is always a group in the builder; a bare condition at the root becomes all-of-one. */
  function parseRoot(json) {
    var m = parse(json);
    return m.type === "group" ? m : group("all", [m]);
  }
  function serialise(m) {
    var out;
    if (m.type === "group") {
      out = {};
      out[m.mode] = m.children.map(serialise);
    } else if (m.type === "cond") {
      out = {field: m.field, op: m.op};
      if (m.value !== undefined) out.value = m.value;
    } else {
      out = m.json;
    }
    return m.not ? {not: out} : out;
  }

  // -- keeping the JSON field in sync --------------------------------------------------------------
  function writeJson() {
    textarea.value = JSON.stringify(serialise(model), null, 2);
    setStatus("");
  }
  function readJson() {
    var text = textarea.value.trim();
    var json;
    try {
      json = text === "" ? {all: []} : JSON.parse(text);
    } catch (e) {
      setStatus("The Audience JSON is not valid yet; the builder shows the last valid predicate.");
      return false;
    }
    model = parseRoot(json);
    render();
    setStatus("");
    return true;
  }
  function setStatus(text) {
    status.textContent = text;
    status.style.display = text ? "" : "none";  // .errornote sets display, so the hidden attribute would not do
  }

  // -- rendering -------------------------------------------------------------------------------------
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "className") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function select(role, options, value, label, unknownNote) {
    var s = el("select", {"data-role": role, "aria-label": label});
    options.forEach(function (o) {
      if (o.group) {
        var g = el("optgroup", {label: o.group});
        o.options.forEach(function (x) { g.appendChild(el("option", {value: x[0], text: x[1], title: x[2] || x[1]})); });
        s.appendChild(g);
      } else {
        s.appendChild(el("option", {value: o[0], text: o[1]}));
      }
    });
    var present = Array.prototype.some.call(s.options, function (o) { return o.value === value; });
    if (!present) s.appendChild(el("option", {value: value, text: value + (unknownNote || " (not in the whitelist)")}));
    s.value = value;
    return s;
  }
  function button(role, text, title) {
    return el("button", {type: "button", "data-role": role, className: "ab-button", text: text, title: title || text});
  }
  function notToggle(m) {
    var box = el("input", {type: "checkbox", "data-role": "not"});
    box.checked = m.not;
    box.addEventListener("change", function () { m.not = box.checked; changed(); });
    return el("label", {className: "ab-not", title: "Negate: match everyone this does NOT match"}, [box, el("span", {text: "NOT"})]);
  }

  function fieldOptions() {
    var byGroup = {};
    var order = [];
    function add(kind, value, text, title) {
      var g = FIELD_GROUPS[kind];
      if (!byGroup[g]) { byGroup[g] = []; order.push(g); }
      byGroup[g].push([value, text, title]);
    }
    schema.fields.forEach(function (f) { add(f.kind, f.name, f.name, f.label); });
    schema.patterns.forEach(function (p) { add(p.kind, p.pattern, p.pattern, p.label); });
    return order.map(function (g) { return {group: g, options: byGroup[g]}; });
  }

  function renderCondition(m) {
    var info = resolve(m.field);
    var row = el("div", {className: "ab-node ab-cond", "data-ab-id": m.id});
    row.appendChild(notToggle(m));

    var fieldSelect = select("field", fieldOptions(), info.pattern ? info.pattern.pattern : m.field, "Field");
    fieldSelect.addEventListener("change", function () {
      var chosen = fieldSelect.value;
      var p = schema.patterns.filter(function (x) { return x.pattern === chosen; })[0];
      m.field = p ? fillPattern(p, p.params.map(function (x) { return x.choices ? x.choices[0][0] : ""; })) : chosen;
      var kind = resolve(m.field).kind;
      var before = editorOf(info.kind, m.op);
      if (opsOf(kind).indexOf(m.op) < 0) m.op = opsOf(kind)[0];
      if (editorOf(kind, m.op) !== before || info.kind !== kind) m.value = defaultValue(editorOf(kind, m.op));
      changed(true, m.id, "field");
    });
    row.appendChild(fieldSelect);
    var meaning = info.plain ? info.plain.label : (info.pattern ? info.pattern.label : "not a field the server accepts");
    fieldSelect.title = meaning;

    if (info.pattern) {
      info.pattern.params.forEach(function (param, i) {
        var input;
        if (param.choices) {
          input = select("param-" + param.name, param.choices.map(function (c) { return [c[0], c[0]]; }), info.args[i], param.name);
          input.addEventListener("change", function () {
            info.args[i] = input.value; m.field = fillPattern(info.pattern, info.args); changed();
          });
        } else {
          input = el("input", {type: "text", size: 14, "data-role": "param-" + param.name, placeholder: param.name + ", e.g. country",
                               "aria-label": param.name, pattern: param.regex ? param.regex.replace(/^\^|\$$/g, "") : ".*"});
          input.value = info.args[i];
          input.addEventListener("input", function () {
            info.args[i] = input.value.trim(); m.field = fillPattern(info.pattern, info.args); changed();
          });
        }
        row.appendChild(input);
      });
    }

    var ops = opsOf(info.kind).map(function (o) { return [o, OP_LABELS[o] || o]; });
    var opSelect = select("op", ops, m.op, "Operator");
    opSelect.addEventListener("change", function () {
      var before = editorOf(info.kind, m.op);
      m.op = opSelect.value;
      if (editorOf(info.kind, m.op) !== before) m.value = defaultValue(editorOf(info.kind, m.op));
      changed(true, m.id, "op");
    });
    row.appendChild(opSelect);
    renderValue(m, editorOf(info.kind, m.op)).forEach(function (e) { row.appendChild(e); });
    row.appendChild(button("remove", "✕", "Remove this condition"));
    return row;
  }

  function renderValue(m, editor) {
    if (editor === "bool") {
      var b = select("value", [["true", "true"], ["false", "false"]], shown(m.value), "Value", " (as loaded)");
      b.addEventListener("change", function () { m.value = b.value === "true"; changed(); });
      return [b];
    }
    var attrs = {type: "text", size: 20, "data-role": "value", "aria-label": "Value"};
    if (editor === "days") { attrs.type = "number"; attrs.min = 0; attrs.max = 36500; attrs.size = 6; }
    if (editor === "date") attrs.placeholder = "2026-01-31 or 2026-01-31T08:00:00+01:00";
    if (editor === "list" || editor === "jsonlist") attrs.placeholder = "values, separated by commas";
    if (editor === "raw") attrs.placeholder = "JSON value";
    var input = el("input", attrs);
    input.value = editor === "raw" ? (m.value === undefined ? "" : JSON.stringify(m.value)) : shown(m.value);
    var out = [input];
    var typeSelect = null;
    if (editor === "json" || editor === "jsonlist") {
      // Attributes compare as JSON: the text "1" is not the number 1, so the type is explicit.
      var type = typeOf(m.value);
      var types = [["string", "as text"], ["number", "as number"], ["boolean", "as true/false"]];
      if (type === "mixed") types.push(["mixed", "as loaded (mixed)"]);
      typeSelect = select("value-type", types, type, "Value type");
      out.push(typeSelect);
    }
    function read() {
      var text = input.value;
      var type = typeSelect ? typeSelect.value : "string";
      if (type === "mixed") type = "string";
      if (editor === "days") m.value = text.trim() === "" ? null : Number(text);
      else if (editor === "list") m.value = splitList(text);
      else if (editor === "jsonlist") m.value = splitList(text).map(function (v) { return convert(v, type); });
      else if (editor === "json") m.value = convert(text, type);
      else if (editor === "raw") { try { m.value = JSON.parse(text); } catch (e) { m.value = text; } }
      else m.value = text;
      changed();
    }
    input.addEventListener("input", read);
    if (typeSelect) typeSelect.addEventListener("change", read);
    return out;
  }

  function renderRaw(m) {
    var box = el("div", {className: "ab-node ab-raw", "data-ab-id": m.id});
    box.appendChild(el("span", {className: "ab-raw-label", text: "JSON (the builder cannot show this part):"}));
    var area = el("textarea", {rows: 3, cols: 60, "data-role": "raw", "aria-label": "JSON node"});
    area.value = m.text;
    area.addEventListener("input", function () {
      m.text = area.value;
      try { m.json = JSON.parse(area.value); area.classList.remove("ab-bad"); }
      catch (e) { m.json = area.value; area.classList.add("ab-bad"); }  // the server refuses it, with the path
      changed();
    });
    box.appendChild(area);
    box.appendChild(button("remove", "✕", "Remove this part"));
    return box;
  }

  function renderGroup(m, isRoot) {
    var box = el("div", {className: "ab-node ab-group" + (isRoot ? " ab-root" : ""), "data-ab-id": m.id});
    var modeSelect = select("mode", [["all", "all (AND)"], ["any", "any (OR)"]], m.mode, "Match all or any");
    modeSelect.addEventListener("change", function () { m.mode = modeSelect.value; changed(true, m.id, "mode"); });
    var head = el("div", {className: "ab-group-head"}, [
      notToggle(m), el("span", {text: "Match "}), modeSelect, el("span", {text: " of the following:"})
    ]);
    if (!isRoot) head.appendChild(button("remove", "Remove group", "Remove this group and everything in it"));
    box.appendChild(head);
    var list = el("div", {className: "ab-children"});
    m.children.forEach(function (child, i) {
      if (i > 0) list.appendChild(el("div", {className: "ab-join", text: m.mode === "all" ? "AND" : "OR"}));
      list.appendChild(renderNode(child, false));
    });
    if (!m.children.length) {
      list.appendChild(el("p", {className: "help ab-empty",
        text: m.mode === "all" ? "Empty: matches every active user." : "Empty: an 'any' group matches nobody."}));
    }
    box.appendChild(list);
    box.appendChild(el("div", {className: "ab-group-foot"}, [
      button("add-condition", "+ Condition", "Add a condition to this group"),
      button("add-group", "+ Group", "Add a nested group to this group")
    ]));
    return box;
  }

  function renderNode(m, isRoot) {
    if (m.type === "group") return renderGroup(m, isRoot);
    if (m.type === "cond") return renderCondition(m);
    return renderRaw(m);
  }

  function findParent(m, id) {
    if (m.type !== "group") return null;
    for (var i = 0; i < m.children.length; i++) {
      if (m.children[i].id === id) return m;
      var found = findParent(m.children[i], id);
      if (found) return found;
    }
    return null;
  }
  function findNode(m, id) {
    if (m.id === id) return m;
    if (m.type !== "group") return null;
    for (var i = 0; i < m.children.length; i++) {
      var found = findNode(m.children[i], id);
      if (found) return found;
    }
    return null;
  }

  function render(focusId, focusRole) {
    tree.textContent = "";
    tree.appendChild(renderNode(model, true));
    markErrors();
    if (focusId) {
      var target = tree.querySelector('[data-ab-id="' + focusId + '"] [data-role="' + focusRole + '"]');
      if (target) target.focus();
    }
  }
  /** A change in the builder: write the JSON; re-render when the shape of a node changed. */
  function changed(rerender, focusId, focusRole) {
    serverErrors = [];  // they were about the predicate as submitted
    writeJson();
    if (rerender) render(focusId, focusRole);
  }

  // Structural buttons, delegated so re-rendered nodes need no wiring.
  tree.addEventListener("click", function (event) {
    var b = event.target.closest("button[data-role]");
    if (!b) return;
    var id = Number(b.closest("[data-ab-id]").getAttribute("data-ab-id"));
    var node = findNode(model, id);
    var role = b.getAttribute("data-role");
    if (role === "add-condition" || role === "add-group") {
      var child = role === "add-condition" ? condition("profile.locale", "eq", "") : group("any", [condition("profile.locale", "eq", "")]);
      node.children.push(child);
      changed(true, child.id, role === "add-condition" ? "field" : "mode");
    } else if (role === "remove") {
      var parent = findParent(model, id);
      parent.children.splice(parent.children.indexOf(node), 1);
      changed(true, parent.id, "mode");
    }
  });
  textarea.addEventListener("input", function () { serverErrors = []; readJson(); });

  // -- the server's verdict: mark the node each message's JSON path points at ------------------------
  var serverErrors = [];
  var errorList = document.querySelector(".field-audience .errorlist, #id_audience_error");
  if (errorList) {
    Array.prototype.forEach.call(errorList.querySelectorAll("li"), function (li) {
      var m = /^(\(root\)|[^\s:]+): (.*)$/.exec(li.textContent.trim());
      if (m) serverErrors.push({path: m[1] === "(root)" ? "" : m[1], message: m[2]});
    });
  }
  /** Every node's JSON path as the server writes it: all[1].any[0], with .not for a negation. */
  function paths(m, path, out) {
    var inner = m.not ? (path ? path + ".not" : "not") : path;
    out.push({node: m, path: path, inner: inner});
    if (m.type === "group") {
      var base = inner ? inner + "." + m.mode : m.mode;
      m.children.forEach(function (c, i) { paths(c, base + "[" + i + "]", out); });
    }
    return out;
  }
  function startsWithPath(path, prefix) {
    if (prefix === "") return true;
    return path === prefix || (path.indexOf(prefix) === 0 && /^[.[]/.test(path.charAt(prefix.length)));
  }
  function markErrors() {
    if (!serverErrors.length) return;
    var all = paths(model, "", []);
    serverErrors.forEach(function (err) {
      var best = null;
      all.forEach(function (p) {
        if (startsWithPath(err.path, p.path) && (!best || p.path.length >= best.path.length)) best = p;
      });
      if (!best) return;
      var box = tree.querySelector('[data-ab-id="' + best.node.id + '"]');
      if (!box) return;
      box.classList.add("ab-invalid");
      var target = box.querySelector(".ab-group-head") || box;
      target.appendChild(el("span", {className: "ab-error", text: (err.path || "(root)") + ": " + err.message}));
    });
  }

  // Sit right above the JSON field (the template renders the builder after the fieldsets).
  var fieldRow = textarea.closest(".form-row");
  if (fieldRow) fieldRow.parentNode.insertBefore(root, fieldRow);
  root.hidden = false;
  if (!readJson()) { model = group("all", []); render(); }
})();
