// Written for sae_lens_attn (not vendored): circuit-tracer's viewer is written against a
// newer d3-jetpack than npm's 2.3.0, whose `d3.conventions(...)` result also has a
// `drawAxis(svg)` method (svg defaults to the result's own svg). Load after d3-jetpack.
(function () {
  var conventions = d3.conventions;
  d3.conventions = function (options) {
    var c = conventions(options);
    c.drawAxis = function (svg) {
      return d3.drawAxis(Object.assign({}, c, { svg: svg || c.svg }));
    };
    return c;
  };
})();
