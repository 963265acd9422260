# A stand-in for the part of nixpkgs' `lib` that nixos-module/default.nix,
# nixos-module/stubs.nix and nixos-module/tests/unit.nix use, written from
# builtins alone: nixpkgs cannot be fetched on every machine the tests run
# on. `tests/deploy/module_unit.rs` evaluates the module with it unless
# FERRY_NIXPKGS_LIB names a nixpkgs `lib/` directory, in which case the real
# `lib.evalModules` runs instead (docs/testing.md says which ran where).
#
# What it does, and all it does:
# - option declarations (`mkOption`, `mkEnableOption`) and the types the
#   module declares with (str, bool, path, package, enum, ints.unsigned,
#   anything, nullOr, either, listOf, attrsOf, submodule), each with a
#   check; a value of the wrong type fails the evaluation, naming the option;
# - definitions with `mkIf`, `mkMerge` and priorities (`mkDefault`,
#   `mkForce`, `mkOverride`), pushed down to the options as the real module
#   system does: the highest priority wins, lists concatenate (a later
#   module's elements first, as in nixpkgs), attribute sets merge key by
#   key, any other conflict fails;
# - `evalModules { modules; }`: modules as attribute sets, functions of
#   `{ config, lib, pkgs, options, ... }` or files holding either (`pkgs`
#   from `_module.args.pkgs` of an attribute-set module); each option's
#   value is the merge of its
#   definitions, else its `default`, else its type's empty value (null, [ ]
#   or { } for nullOr, listOf, attrsOf and submodules, as in nixpkgs); any
#   other option read with neither fails, and so does a definition of an
#   option nobody declared.
# Not here: `imports`, `freeformType`, `mkOrder`/`mkBefore`/`mkAfter`,
# option documentation. A module that needs more fails with Nix's
# "attribute '…' missing" naming the function: add it here, from builtins,
# with a known answer in ./lib-standin-check.nix that nixpkgs' lib gives too.
let
  inherit (builtins)
    all any attrNames concatMap elem filter foldl' head isAttrs isBool isFunction
    isInt isList isPath isString length listToAttrs mapAttrs stringLength substring tail toJSON;

  # --- the plain functions the module calls -------------------------------
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalAttrs = cond: set: if cond then set else { };
  optionalString = cond: s: if cond then s else "";
  mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
  filterAttrs = pred: set: listToAttrs (concatMap
    (n: optional (pred n set.${n}) { name = n; value = set.${n}; })
    (attrNames set));
  # Recurses into every attribute set, as nixpkgs' does (`cond` always true).
  mapAttrsRecursive = f: set:
    let
      recurse = path: s: mapAttrs
        (n: v: if isAttrs v then recurse (path ++ [ n ]) v else f (path ++ [ n ]) v)
        s;
    in
    recurse [ ] set;
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  hasSuffix = suffix: s:
    let n = stringLength s; m = stringLength suffix; in
    n >= m && substring (n - m) m s == suffix;
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  showOption = concatStringsSep ".";
  inherit (builtins) concatStringsSep;
  isDerivation = v: isAttrs v && v.type or null == "derivation";
  isStorePath = v: isString v && hasPrefix "${builtins.storeDir}/" v
    && builtins.match "[0-9a-df-np-sv-z]{32}-[^/]+" (substring (stringLength builtins.storeDir + 1) 4096 v) != null;

  # --- definitions ---------------------------------------------------------
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  literalExpression = text: { _type = "literalExpression"; inherit text; };
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };
  isOption = v: isAttrs v && v._type or null == "option";

  # A definition with its `mkIf`s and `mkMerge`s expanded: a list of
  # { priority; value; } (100 for a plain definition, as nixpkgs has it).
  discharge = loc: v:
    let t = if isAttrs v then v._type or null else null; in
    if t == "if" then
      (if isBool v.condition then (if v.condition then discharge loc v.content else [ ])
      else throw "The option `${showOption loc}' has a mkIf whose condition is not a boolean.")
    else if t == "merge" then concatMap (discharge loc) v.contents
    else if t == "override" then map (d: d // { inherit (v) priority; }) (discharge loc v.content)
    else [{ priority = 100; value = v; }];

  # The definitions found at `path` below a definition, with the mkIf,
  # mkMerge and priorities above them carried down. A mkIf's condition is
  # not evaluated on the way (it may read the very options being found): it
  # wraps each definition below it, and is decided at the option.
  defsAt = path: v:
    let t = if isAttrs v then v._type or null else null; in
    if path == [ ] then [ v ]
    else if t == "if" then map (mkIf v.condition) (defsAt path v.content)
    else if t == "merge" then concatMap (defsAt path) v.contents
    else if t == "override" then map (mkOverride v.priority) (defsAt path v.content)
    else if isAttrs v && v ? ${head path} then defsAt (tail path) v.${head path}
    else [ ];

  # The values of the definitions that win: those of the highest priority.
  winning = loc: defs:
    let
      all' = concatMap (discharge loc) defs;
      top = foldl' (p: d: if d.priority < p then d.priority else p) 10000 all';
    in
    map (d: d.value) (filter (d: d.priority == top) all');

  show = v: if isFunction v then "<function>" else toJSON v;
  mergeEqual = loc: values:
    if all (v: v == head values) values then head values
    else throw "The option `${showOption loc}' has conflicting definition values: ${concatStringsSep ", " (map show values)}.";
  checked = loc: type: v:
    if type.check v then v
    else throw "A definition for option `${showOption loc}' is not of type `${type.description}': ${show v}.";

  # Merges the definitions `defs` of a value of `type` at `loc`:
  # { defined = false; } when every one was dropped by mkIf.
  mergeDefs = loc: type: defs:
    let values = winning loc defs; in
    if values == [ ] then { defined = false; }
    else { defined = true; value = type.merge loc (map (checked loc type) values); };

  mergeAttrs = elemType: loc: values:
    let names = unique (concatMap attrNames values); in
    listToAttrs (concatMap
      (n:
        let r = mergeDefs (loc ++ [ n ]) elemType (concatMap (v: optional (v ? ${n}) v.${n}) values);
        in optional r.defined { name = n; value = r.value; })
      names);

  # --- option types ----------------------------------------------------------
  # `emptyValue`: what an option of the type is when nothing defines it and
  # it has no default (nixpkgs': [ ], { }, null; for other types, an error).
  mkType = { name, description ? name, check, merge ? mergeEqual, emptyValue ? { } }:
    { _type = "option-type"; inherit name description check merge emptyValue; };
  types = rec {
    str = mkType { name = "str"; description = "string"; check = isString; };
    bool = mkType { name = "bool"; description = "boolean"; check = isBool; };
    path = mkType {
      name = "path";
      description = "absolute path";
      check = v: isPath v || (isString v && hasPrefix "/" v);
    };
    package = mkType { name = "package"; check = v: isDerivation v || isStorePath v; };
    enum = values: mkType {
      name = "enum";
      description = "one of ${concatStringsSep ", " (map toJSON values)}";
      check = v: elem v values;
    };
    ints.unsigned = mkType {
      name = "unsignedInt";
      description = "unsigned integer";
      check = v: isInt v && v >= 0;
    };
    anything = mkType {
      name = "anything";
      check = _: true;
      merge = loc: values:
        if all (v: isAttrs v && !isDerivation v) values then mergeAttrs anything loc values
        else mergeEqual loc values;
    };
    nullOr = t: mkType {
      name = "nullOr";
      description = "null or ${t.description}";
      check = v: v == null || t.check v;
      emptyValue.value = null;
      merge = loc: values:
        if all (v: v == null) values then null
        else if any (v: v == null) values then throw "The option `${showOption loc}' is defined both null and not null."
        else t.merge loc values;
    };
    either = a: b: mkType {
      name = "either";
      description = "${a.description} or ${b.description}";
      check = v: a.check v || b.check v;
      merge = loc: values:
        if all a.check values then a.merge loc values
        else if all b.check values then b.merge loc values
        else mergeEqual loc values;
    };
    listOf = t: mkType {
      name = "listOf";
      description = "list of ${t.description}";
      check = isList;
      emptyValue.value = [ ];
      merge = loc: values: concatMap
        (v: concatMap
          (e: let r = mergeDefs (loc ++ [ "[]" ]) t [ e ]; in optional r.defined r.value)
          v)
        values;
    };
    attrsOf = t: mkType {
      name = "attrsOf";
      description = "attribute set of ${t.description}";
      check = isAttrs;
      emptyValue.value = { };
      merge = mergeAttrs t;
    };
    submodule = spec:
      let options = (if isFunction spec then spec { inherit lib; } else spec).options; in
      mkType {
        name = "submodule";
        check = isAttrs;
        emptyValue.value = { };
        merge = loc: values: evalOptions loc options values;
      };
  };

  # --- evaluation ------------------------------------------------------------
  # The value of every option declared in `decls` (a tree whose leaves are
  # options) from the definitions `defs` (trees of config).
  evalOptions = loc: decls: defs:
    let
      undeclared = undeclaredIn loc decls defs;
    in
    if undeclared != [ ] then
      throw "The option `${head undeclared}' does not exist (defined in a module, declared by none)."
    else
      mapAttrs
        (n: d:
          let here = concatMap (defsAt [ n ]) defs; in
          if isOption d then optionValue (loc ++ [ n ]) d here
          else evalOptions (loc ++ [ n ]) d here)
        decls;

  optionValue = loc: opt: defs:
    let
      type = opt.type or types.anything;
      r = mergeDefs loc type (defs ++ optional (opt ? default) (mkOverride 1500 opt.default));
    in
    if r.defined then r.value
    else if type.emptyValue ? value then type.emptyValue.value
    else throw "The option `${showOption loc}' is used but not defined: set it, or give it a default.";

  # The names defined below `loc` that no declaration covers.
  undeclaredIn = loc: decls: defs:
    let
      # The attribute names a definition sets at this level (mkIf
      # conditions are not forced here: a name under a false mkIf still
      # has to be declared, as in nixpkgs).
      namesOf = v:
        let t = if isAttrs v then v._type or null else null; in
        if t == "if" || t == "override" then namesOf v.content
        else if t == "merge" then concatMap namesOf v.contents
        else if isAttrs v then attrNames v
        else [ ];
      names = filter (n: n != "_module") (unique (concatMap namesOf defs));
    in
    map (n: showOption (loc ++ [ n ])) (filter (n: !(decls ? ${n})) names);

  mergeDecls = a: b: a // mapAttrs
    (n: v:
      if !(a ? ${n}) then v
      else if isOption v || isOption a.${n} then throw "The option `${n}' is declared twice."
      else mergeDecls a.${n} v)
    b;

  evalModules = { modules, specialArgs ? { } }:
    let
      plain = filter isAttrs modules;
      pkgs = foldl' (p: m: (m._module or { }).args.pkgs or p) { } plain;
      args = specialArgs // { inherit config lib pkgs options; };
      # A module is a path to import, a function of `args` or a set.
      loaded = map
        (m:
          let m' = if isPath m || isString m then import m else m; in
          if isFunction m' then m' args else m')
        modules;
      options = foldl' mergeDecls { } (map (m: m.options or { }) loaded);
      defsOf = m:
        if m ? options || m ? config then m.config or { }
        else removeAttrs m [ "_module" ];
      # Definitions of later modules first, as nixpkgs orders them (a list
      # option defined by two modules lists the later one's elements first).
      config = evalOptions [ ] options (map defsOf (lib.reverseList loaded));
    in
    { inherit config options; };

  lib = {
    inherit optional optionals optionalAttrs optionalString mapAttrsToList filterAttrs mapAttrsRecursive
      hasPrefix hasSuffix unique concatStringsSep isDerivation isStorePath
      mkOverride mkDefault mkForce mkIf mkMerge mkOption mkEnableOption literalExpression
      types evalModules showOption;
    inherit (builtins) all any elem filter head tail length attrNames mapAttrs;
    reverseList = xs: builtins.genList (i: builtins.elemAt xs (length xs - 1 - i)) (length xs);
    # Which lib this is, for the tests' output and the docs.
    standIn = true;
  };
in
lib
