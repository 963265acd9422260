# What NixOS would install for services.ferry-agent under one configuration,
# rendered to plain text for tests/deploy/module_unit.rs, which runs it in
# the testbed's systemd: the unit file of `systemd.services.ferry-agent`
# (written as nixpkgs' nixos/lib/systemd-lib.nix writes units), the files
# under /etc/ferry, the tmpfiles rules, node_exporter's flags, the failing
# assertions, and every option's value (each forced and type-checked).
#
# The module is evaluated with `lib.evalModules` and the stubs of
# ../stubs.nix; `lib` is nixpkgs' own when `nixpkgsLib` names a nixpkgs
# `lib/` directory (FERRY_NIXPKGS_LIB), else ./lib-standin.nix.
#
#   nix-instantiate --eval --strict --json nixos-module/tests/unit.nix \
#     --arg configuration ./config.nix --argstr packagesJson '{"ferry-agent": "/nix/store/…"}'
{
  # A nixpkgs `lib/` directory, or "" for the stand-in.
  nixpkgsLib ? ""
, # The test's configuration: a NixOS module.
  configuration
, # Store paths standing in for nixpkgs' packages (JSON): `ferry-agent`,
  # `nix` (nix.package), the default PATH of every NixOS service
  # (`coreutils`, `findutils`, `gnugrep`, `gnused`, `systemd`), `tzdata`,
  # and any the configuration names through `pkgs` (e.g. `curl`).
  packagesJson ? "{}"
}:

let
  lib = if nixpkgsLib == "" then import ./lib-standin.nix else import nixpkgsLib;
  packages = builtins.fromJSON packagesJson;
  stubs = import ../stubs.nix { inherit lib; };
  # The stubs' files, kept in memory instead of the store (an evaluation
  # may not write it): `{ name; text; }`, read back below.
  inMemory = name: text: { inherit name text; };
  pkgs = stubs.pkgs // {
    formats.toml = args: (stubs.pkgs.formats.toml args) // {
      generate = name: value: inMemory name (builtins.toJSON value);
    };
    writeText = inMemory;
  } // packages;
  eval = lib.evalModules {
    modules = [
      ../default.nix
      stubs.module
      { _module.args.pkgs = pkgs; }
      (lib.optionalAttrs (packages ? nix) { nix.package = packages.nix; })
      configuration
    ];
  };
  config = eval.config;
  inherit (builtins) attrNames concatMap concatStringsSep filter isAttrs isList map toJSON;

  # --- the unit, as nixos/lib/systemd-lib.nix renders a service -------------
  unit = config.systemd.services.ferry-agent;
  # The unit options this renderer knows; any other the module sets fails
  # the evaluation here rather than silently missing from the test's unit.
  known = [
    "description" "documentation" "wantedBy" "requiredBy" "upheldBy" "wants" "requires"
    "upholds" "after" "before" "bindsTo" "partOf" "conflicts" "requisite" "onFailure"
    "onSuccess" "unitConfig" "serviceConfig" "environment" "path" "restartIfChanged"
    "reloadIfChanged" "stopIfChanged" "enable"
  ];
  unknown = filter (k: !(builtins.elem k known)) (attrNames unit);
  # `toOption` and `attrsToSection`: booleans as true/false, a list as one
  # line per element, in the order of the attribute names.
  toOption = x: if x == true then "true" else if x == false then "false" else toString x;
  attrsToSection = as: concatStringsSep "" (concatMap
    (name: map (x: "${name}=${toOption x}\n") (if isList as.${name} then as.${name} else [ as.${name} ]))
    (attrNames as));
  listed = name: key: lib.optionalAttrs ((unit.${name} or [ ]) != [ ]) { ${key} = toString unit.${name}; };
  unitConfig =
    listed "requires" "Requires" // listed "wants" "Wants" // listed "upholds" "Upholds"
    // listed "after" "After" // listed "before" "Before" // listed "bindsTo" "BindsTo"
    // listed "partOf" "PartOf" // listed "conflicts" "Conflicts" // listed "requisite" "Requisite"
    // lib.optionalAttrs ((unit.description or "") != "") { Description = unit.description; }
    // listed "documentation" "Documentation" // listed "onFailure" "OnFailure"
    // listed "onSuccess" "OnSuccess"
    // (unit.unitConfig or { });
  # Every NixOS service gets this PATH: its `path` and then (mkAfter)
  # coreutils, findutils, grep, sed and systemd; bin/ of each, then sbin/.
  path = (unit.path or [ ]) ++ map (p: packages.${p}) [ "coreutils" "findutils" "gnugrep" "gnused" "systemd" ];
  # systemd.globalEnvironment: TZDIR, from NixOS's time zone module.
  environment = { TZDIR = "${packages.tzdata}/share/zoneinfo"; }
    // { PATH = concatStringsSep ":" (map (p: "${p}/bin") path ++ map (p: "${p}/sbin") path); }
    // (unit.environment or { });
  text =
    "[Unit]\n" + attrsToSection unitConfig + "\n"
    + "[Service]\n"
    + concatStringsSep "" (map (n: "Environment=${toJSON "${n}=${environment.${n}}"}\n")
      (filter (n: environment.${n} != null) (attrNames environment)))
    + (if unit.reloadIfChanged or false then "X-ReloadIfChanged=true\n"
    else if !(unit.restartIfChanged or true) then "X-RestartIfChanged=false\n" else "")
    + lib.optionalString (!(unit.stopIfChanged or true)) "X-StopIfChanged=false\n"
    + attrsToSection (unit.serviceConfig or { })
    + lib.optionalString ((unit.wantedBy or [ ]) != [ ])
      "\n[Install]\nWantedBy=${concatStringsSep " " unit.wantedBy}\n";

  # --- /etc/ferry ------------------------------------------------------------
  etc = lib.mapAttrs
    (_: e:
      if e ? text then e.text
      else if isAttrs e.source then e.source.text
      else builtins.readFile e.source)
    (lib.filterAttrs (n: _: lib.hasPrefix "ferry/" n) config.environment.etc);

  # --- every option of services.ferry-agent, forced ---------------------------
  optionPaths = prefix: decls: concatMap
    (n:
      let d = decls.${n}; in
      if d._type or null == "option" then [ (prefix ++ [ n ]) ] else optionPaths (prefix ++ [ n ]) d)
    (attrNames decls);
  valueAt = path: set: if path == [ ] then set else valueAt (builtins.tail path) set.${builtins.head path};
  options = map
    (p: { path = concatStringsSep "." p; value = valueAt p config.services.ferry-agent; })
    (optionPaths [ ] eval.options.services.ferry-agent);
in
if unknown != [ ] then
  throw "nixos-module/tests/unit.nix: systemd.services.ferry-agent sets ${toString unknown}, which this renderer does not write; teach it how NixOS renders them."
else {
  lib = if lib.standIn or false then "stand-in" else "nixpkgs ${lib.version or "(unknown version)"}";
  unit = text;
  inherit etc options;
  tmpfiles = (config.systemd.tmpfiles or { }).rules or [ ];
  nodeExporter = config.services.prometheus.exporters.node;
  failedAssertions = map (a: a.message) (filter (a: !a.assertion) config.assertions);
}
