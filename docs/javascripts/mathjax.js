// MathJax configuration for pymdownx.arithmatex (generic mode): \( \) inline, \[ \] display.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "ams",
  },
  options: {
    // only the math pymdownx.arithmatex marked, and the navigation's link texts, where the
    // table of contents shows a heading's math as plain TeX (## The closed form \(q(x_t)\));
    // md-ellipsis is the span inside each link, which would be ignored otherwise
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|md-nav__link|md-ellipsis",
  },
};

// mkdocs-material's instant navigation swaps pages without a reload: typeset each new page.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.startup && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
