// Loaded on pages with widgets, between require.js and the ipywidgets HTML manager (see
// nb_ipywidgets_js in _config.yml). Two adjustments for a self-contained site with MathJax 3:

// 1. The manager finds its icon fonts next to the URL RequireJS gives its module. Without this
//    mapping that URL lies beside the page (notebooks/@jupyter-widgets/html-manager/dist/): 404s.
require.config({
  paths: {"@jupyter-widgets/html-manager/dist": new URL("vendor/html-manager", document.currentScript.src).href},
});

// 2. Widget labels are typeset with the MathJax 2 call MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]);
//    the book loads MathJax 3, so give it that one call. Registered before the manager's own
//    DOMContentLoaded handler, so it is in place before any widget renders.
document.addEventListener("DOMContentLoaded", () => {
  if (window.MathJax && MathJax.startup && !MathJax.Hub) {
    MathJax.Hub = {
      Queue: ([, , element]) => MathJax.startup.promise.then(() => MathJax.typesetPromise([element])),
    };
  }
});
