# Known answers of the module system, for ./lib-standin.nix and nixpkgs' lib
# alike: each attribute is true when `lib` evaluates modules as nixpkgs does
# on that point (defaults, priorities, mkIf, merging, submodule defaults, and
# the failures: a wrong type, an undeclared option, an unset one with
# neither a default nor an empty value, a conflict).
# tests/deploy/module_unit.rs evaluates it with the stand-in, and with the
# real lib too when FERRY_NIXPKGS_LIB is set.
{ nixpkgsLib ? "" }:

let
  lib = if nixpkgsLib == "" then import ./lib-standin.nix else import nixpkgsLib;
  inherit (lib) mkOption mkIf mkDefault mkForce mkMerge types;
  declarations = {
    options = {
      a = mkOption { type = types.str; default = "d"; };
      b = mkOption { type = types.bool; default = false; };
      l = mkOption { type = types.listOf types.str; default = [ ]; };
      s = mkOption { type = types.attrsOf types.anything; default = { }; };
      n = mkOption { type = types.nullOr types.str; };
      r = mkOption { type = types.str; };
      lr = mkOption { type = types.listOf types.str; };
      e = mkOption { type = types.enum [ "x" "y" ]; default = "x"; };
      u = mkOption { type = types.ints.unsigned; default = 0; };
      p = mkOption { type = types.either (types.listOf types.str) types.path; default = [ ]; };
      sub = mkOption {
        type = types.listOf (types.either types.str (types.submodule {
          options = {
            c = mkOption { type = types.str; };
            t = mkOption { type = types.str; default = "60s"; };
          };
        }));
        default = [ ];
      };
      ns.inner = mkOption { type = types.str; default = "i"; };
    };
  };
  eval = defs: (lib.evalModules { modules = [ declarations ] ++ defs; }).config;
  fails = e: !(builtins.tryEval (builtins.deepSeq e e)).success;
in
{
  defaultWhenUnset = (eval [ ]).a == "d" && (eval [ ]).ns.inner == "i";
  setWins = (eval [{ a = "x"; }]).a == "x";
  mkDefaultLoses = (eval [{ a = mkDefault "x"; } { a = "y"; }]).a == "y";
  mkForceWins = (eval [{ a = mkForce "x"; } { a = "y"; }]).a == "x";
  # Later modules' definitions first.
  listsConcatenate = (eval [{ l = [ "a" ]; } { l = [ "b" ]; }]).l == [ "b" "a" ];
  mkIfFalseDrops = (eval [{ l = mkIf false [ "a" ]; } { l = [ "b" ]; }]).l == [ "b" ];
  mkIfTrueKeeps = (eval [{ b = mkIf true true; }]).b;
  mkIfPushedDown = (eval [ (mkIf true { a = "x"; ns.inner = "j"; }) ]).ns.inner == "j";
  mkIfReadsConfig = (eval [ ({ config, ... }: { b = mkIf (config.a == "x") true; a = "x"; }) ]).b;
  mkMergeMerges = (eval [{ l = mkMerge [ [ "a" ] (mkIf false [ "b" ]) [ "c" ] ]; }]).l == [ "a" "c" ];
  unsetNullOrIsNull = (eval [ ]).n == null;
  unsetListIsEmpty = (eval [ ]).lr == [ ];
  leafPrioritiesInSets =
    (eval [{ s = lib.mapAttrsRecursive (_: mkDefault) { x.y = 1; x.z = 2; }; } { s.x.y = 3; }]).s
    == { x = { y = 3; z = 2; }; };
  setsMergeByKey = (eval [{ s.x = 1; } { s.y = 2; }]).s == { x = 1; y = 2; };
  submoduleDefaults = (eval [{ sub = [ "s" { c = "cmd"; } ]; }]).sub == [ "s" { c = "cmd"; t = "60s"; } ];
  eitherTakesAPath = (eval [{ p = "/etc/x"; }]).p == "/etc/x";
  nullAllowed = (eval [{ n = null; }]).n == null;
  wrongTypeFails = fails (eval [{ a = 1; }]).a;
  wrongEnumFails = fails (eval [{ e = "z"; }]).e;
  negativeUnsignedFails = fails (eval [{ u = -1; }]).u;
  wrongElementFails = fails (eval [{ l = [ 1 ]; }]).l;
  undeclaredFails = fails (eval [{ nope = 1; }]).a;
  undeclaredUnderAFalseMkIfFails = fails (eval [ (mkIf false { nope = 1; }) ]).a;
  unsetStrWithoutDefaultFails = fails (eval [ ]).r;
  submoduleUnsetFails = fails (eval [{ sub = [{ t = "1s"; }]; }]).sub;
  conflictFails = fails (eval [{ a = "x"; } { a = "y"; }]).a;
}
