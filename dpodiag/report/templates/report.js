// Unpack the embedded plotly.js bundle (gzip + base64), then draw every chart from its JSON block.
(function () {
  "use strict";
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  function showFailure(message) {
    for (const plot of document.querySelectorAll(".plot")) {
      plot.textContent = message;
      plot.classList.add("failed");
    }
  }

  // Decode and decompress with the browser's own DecompressionStream, then run the bundle as an
  // inline script, which defines window.Plotly; no URL is fetched.
  async function loadPlotly() {
    const binary = atob(document.getElementById("plotly-bundle").textContent.trim());
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const script = document.createElement("script");
    script.textContent = await new Response(stream).text();
    document.head.appendChild(script);
  }

  async function drawCharts() {
    if (typeof DecompressionStream === "undefined") {
      showFailure("Charts need a browser with DecompressionStream (Chrome 80, Firefox 113, Safari 16.4 or later); the tables still hold every number.");
      return;
    }
    const started = performance.now();
    await loadPlotly();
    const loaded = performance.now();
    for (const plot of document.querySelectorAll(".plot[data-figure]")) {
      const figure = JSON.parse(document.getElementById(plot.dataset.figure).textContent);
      await Plotly.newPlot(plot, figure.data, figure.layout, CONFIG);
    }
    // Timings of the two stages, for measuring the cost of opening the page.
    document.body.dataset.plotlyMs = String(Math.round(loaded - started));
    document.body.dataset.chartsMs = String(Math.round(performance.now() - loaded));
    document.body.dataset.chartsReady = "true";
  }

  // Printed pages are narrower than the screen: fit each chart to its box before printing, and
  // print the info notes, which are folded on screen.
  window.addEventListener("beforeprint", function () {
    for (const details of document.querySelectorAll("details.infos")) {
      details.open = true;
    }
    if (window.Plotly) {
      for (const plot of document.querySelectorAll(".plot.js-plotly-plot")) {
        Plotly.Plots.resize(plot);
      }
    }
  });

  drawCharts().catch(function (error) {
    console.error(error);
    showFailure("Charts could not be drawn: " + error.message);
  });
})();
